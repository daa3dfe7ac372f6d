"""effnet-ray: label millions of images with EfficientNet on a Ray cluster, OpenVINO inside.

    options = effnet_ray.LabelOptions.build(["photos/"], "out/", top_k=3)
    summary = effnet_ray.label(options)

The options and errors load at once; `label`, `Summary` and `ProgressState` load Ray and
OpenVINO, so they are imported on first use: making and checking options stays instant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from effnet_ray.errors import UserError
from effnet_ray.options import (
    InferenceOptions,
    LabelOptions,
    PlacementOptions,
    ReadOptions,
    RunOptions,
)

if TYPE_CHECKING:
    from effnet_ray.api import label
    from effnet_ray.run.job import Summary
    from effnet_ray.run.progress import ProgressState

__version__ = "0.1.0"

_ON_FIRST_USE = {"label": "effnet_ray.api", "Summary": "effnet_ray.run.job",
                 "ProgressState": "effnet_ray.run.progress"}


def __getattr__(name: str) -> object:
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module 'effnet_ray' has no attribute {name!r}")


__all__ = ["InferenceOptions", "LabelOptions", "PlacementOptions", "ProgressState",
           "ReadOptions", "RunOptions", "Summary", "UserError", "__version__", "label"]
