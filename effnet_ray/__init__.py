"""effnet-ray: label millions of images with EfficientNet on a Ray cluster, OpenVINO inside."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from effnet_ray.errors import UserError

if TYPE_CHECKING:
    from effnet_ray.run.job import Summary

__version__ = "0.1.0"


def label(inputs: list[str], output: str, progress: Callable | None = None,
          **options: object) -> Summary:
    """Run the labeling job from Python; takes the same options as `effnet-ray label`.

    Messages go to the `effnet_ray` logger (progress lines at INFO, warnings at WARNING);
    attach a handler to see or route them. `progress`, if given, is called instead of the
    progress lines with an `effnet_ray.progress.ProgressState` after every commit."""
    from effnet_ray.options import build_options
    from effnet_ray.run.job import run
    from effnet_ray.run.preflight import prepare_run

    return run(prepare_run(build_options(inputs, output, **options)), progress)


__all__ = ["UserError", "label", "__version__"]
