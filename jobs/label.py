"""Entry point for Ray job submission; takes exactly the arguments of `effnet-ray label`.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- python jobs/label.py INPUT... --output OUT ...

A job's driver runs inside the cluster, so the run attaches to it (`--address auto`) unless
another address is given. Everything it needs travels with `--working-dir` or is named by URI
(inputs, --output, --model-path on an object store).
"""

import sys
from pathlib import Path

# The working directory is the job's current directory, but `python jobs/label.py` puts
# jobs/ first on sys.path; make the uploaded package importable when it is not installed.
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from effnet_ray.cli import entry_point  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--address" or a.startswith("--address=") for a in args):
        args += ["--address", "auto"]
    entry_point(["label", *args])
