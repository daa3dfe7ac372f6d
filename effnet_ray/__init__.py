"""effnet-ray: label millions of images with EfficientNet on a Ray cluster, OpenVINO inside."""

from __future__ import annotations

from typing import TYPE_CHECKING

from effnet_ray.errors import UserError

if TYPE_CHECKING:
    from effnet_ray.job import Summary

__version__ = "0.1.0"


def label(inputs: list[str], output: str, **options: object) -> Summary:
    """Run the labeling job from Python; takes the same options as `effnet-ray label`."""
    from effnet_ray.config import build_label_config
    from effnet_ray.job import run

    return run(build_label_config(inputs=inputs, output=output, **options))


__all__ = ["UserError", "label", "__version__"]
