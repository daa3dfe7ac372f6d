# The two front doors: `make demo` and `make test`. Both build .venv from scratch if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit lint bench bench-scale clean

# torch is installed first and pinned: this machine carries a CPU build of 2.13.0 on disk,
# and any other torch request would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[convert,cloud,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/effnet-ray demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest

# The fast layer: pure parts and single stages without Ray, in seconds.
unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

# Run alone: any other job on the cores moves these figures by 30% or more.
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_label.py
	$(BIN)/python benchmarks/bench_pipeline.py
	$(BIN)/python benchmarks/bench_decode_fast.py
	$(BIN)/python benchmarks/bench_camera.py
	$(BIN)/python benchmarks/bench_scale.py --images 20000

# A million images through the whole loop (label, SIGKILL at half, rerun, compact), and the
# driver's listing and scan at millions of keys: about an hour on 2 cores, run alone.
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py --images 1000000
	$(BIN)/python benchmarks/bench_driver_scale.py

clean:
	rm -rf $(VENV) .demo-output
