"""The Python entry point: `label(options)` runs one labeling job, as `effnet-ray label` does."""

from __future__ import annotations

from effnet_ray.options import LabelOptions
from effnet_ray.run.job import Summary, run
from effnet_ray.run.preflight import prepare_run
from effnet_ray.run.progress import Reporter


def label(options: LabelOptions, /, *, progress: Reporter | None = None) -> Summary:
    """Label what `options.output` does not hold yet, and say what the output holds.

    Everything is checked before any work starts (a fault is one `UserError`). Messages go to
    the `effnet_ray` logger (progress lines at INFO, warnings at WARNING); `progress`, if
    given, is called instead of the progress lines with a `ProgressState` after every
    commit."""
    return run(prepare_run(options), progress)
