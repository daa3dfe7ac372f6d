"""What a person sees: a live bar in a real terminal (tmux), progress lines elsewhere, and
none of Ray's routine log lines unless --verbose."""

import re
import shutil
import subprocess
import time

import pytest

import effnet_ray
from tests.helpers import CLI, ROOT, debian_tool, run_cli

RAY_NOISE = ("streaming_executor", "core_worker.cc", "Total Progress", "logging_progress",
             "Progress bars", "INFO", "tqdm is not installed")


def lite0(ir):
    return ["--model", "efficientnet-lite0", "--model-path", str(ir), "--precision", "f32",
            "--batch-size", "4", "--unit-size", "8"]


@pytest.fixture(scope="module")
def tmux():
    return debian_tool("tmux")


def test_a_terminal_shows_one_live_bar_and_no_ray_lines(tmux, many_photos, lite0_ir,
                                                        tmp_path):
    session = f"effnet{int(time.time() * 1000) % 10**8}"
    done = tmp_path / "done"
    command = " ".join([*CLI, "label", str(many_photos), "--output", str(tmp_path / "out"),
                        *lite0(lite0_ir)]) + f"; echo exit=$? > {done}; sleep 600"
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "40",
                    f"cd {ROOT} && {command}"], check=True)
    screens = []
    try:
        deadline = time.time() + 600
        while not done.exists() and time.time() < deadline:
            screens.append(subprocess.run([tmux, "capture-pane", "-p", "-t", session],
                                          capture_output=True, text=True).stdout)
            time.sleep(0.5)
        screens.append(subprocess.run([tmux, "capture-pane", "-p", "-t", session],
                                      capture_output=True, text=True).stdout)
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)
    assert done.read_text().strip() == "exit=0"
    bars = [m for s in screens for m in re.findall(r"(\d+)%\|.*\| (\d+)/84 ", s)]
    assert bars and bars[-1] == ("100", "84"), screens[-1]
    for screen in screens:
        assert not any(noise in screen for noise in RAY_NOISE), screen
    assert "labelled 84 images" in screens[-1]


def test_off_a_terminal_progress_is_a_line_every_few_seconds(many_photos, lite0_ir, tmp_path):
    result = run_cli("label", many_photos, "--output", tmp_path / "out", *lite0(lite0_ir),
                     "--progress-seconds", "0.5")
    assert result.returncode == 0, result.stderr
    lines = re.findall(r"progress: (\d+)/(\d+) images \(([\d.]+)%\), [\d.]+ images/s, "
                       r"ETA \S+, (\d+) errors", result.stderr)
    assert len(lines) >= 2 and lines[-1] == ("84", "84", "100.0", "0")
    assert all(total == "84" for _, total, _, _ in lines)
    assert not any(noise in result.stderr for noise in RAY_NOISE), result.stderr
    verbose = run_cli("label", many_photos, "--output", tmp_path / "out2", *lite0(lite0_ir),
                      "--verbose")
    assert verbose.returncode == 0 and "INFO" in verbose.stderr


def test_a_resumed_run_counts_what_was_already_done(many_photos, lite0_ir, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(many_photos, inputs)
    out = tmp_path / "out"
    options = dict(model="efficientnet-lite0", model_path=str(lite0_ir), precision="f32",
                   batch_size=4, unit_size=8)
    effnet_ray.label(effnet_ray.LabelOptions.build([str(inputs)], str(out), **options))
    for i in range(4):
        shutil.copy(many_photos / "img000.jpg", inputs / f"new{i}.jpg")
    states = []
    summary = effnet_ray.label(effnet_ray.LabelOptions.build([str(inputs)], str(out), **options),
                               progress=lambda s: states.append(
                                   (s.done, s.total, s.done_at_start)))
    first, last = states[0], states[-1]
    assert first[1] == last[1] == 88 and last[0] == 88
    assert first[2] >= 84 - 16  # only the units the new files fell into are redone
    assert summary.this_run == 88 - first[2]
