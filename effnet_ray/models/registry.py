"""Model contracts: one TOML file per model in configs/models, validated when loaded.

A contract says what the converted IR takes and gives (names, layout, shape, colour order,
value range) and how an image must be prepared to reproduce the published accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TypeVar, cast

from effnet_ray.errors import UserError
from effnet_ray.models.configs import configs_dir, no_extra, read_toml, take

PREPROCESS_OPS = {
    "resize_short_side": {"size", "interpolation"},
    "resize": {"width", "height", "interpolation"},
    "center_crop": {"width", "height"},
    "central_fraction_crop": {"fraction"},
}
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")
# Real photos shipped with the package: the demo's inputs and conversion's calibration set.
PHOTOS = Path(str(resources.files("effnet_ray"))) / "data" / "photos"

_T = TypeVar("_T")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    layout: str
    shape: tuple[int, ...]
    color: str

    @property
    def height(self) -> int:
        return self.shape[self.layout.index("H")]

    @property
    def width(self) -> int:
        return self.shape[self.layout.index("W")]


@dataclass(frozen=True)
class OutputSpec:
    name: str
    kind: str
    classes: int


@dataclass(frozen=True)
class Step:
    op: str
    size: int | None = None
    width: int | None = None
    height: int | None = None
    fraction: float | None = None
    interpolation: str = "bicubic"


@dataclass(frozen=True)
class WeightsSource:
    architecture: str
    weights_file: str
    weights_sha256: str
    mean: tuple[float, float, float]
    scale: tuple[float, float, float]
    weights_url: str | None = None
    weights_package: str | None = None


@dataclass(frozen=True)
class Card:
    mparams: float
    gflops: float
    top1: float


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    class_names: str  # file in effnet_ray/data: one class per line, in index order
    input: TensorSpec
    output: OutputSpec
    preprocess: tuple[Step, ...]
    source: WeightsSource
    card: Card | None = None


def _take(table: dict, key: str, kind: type[_T], where: str) -> _T:
    """`take` of a single type, typed as that type (`take` checked it)."""
    return cast(_T, take(table, key, kind, where))


def _parse_input(t: dict, where: str) -> TensorSpec:
    no_extra(t, {"name", "layout", "shape", "color"}, where)
    layout = _take(t, "layout", str, where)
    shape = tuple(_take(t, "shape", list, where))
    if layout not in ("NCHW", "NHWC"):
        raise UserError(f"{where}: layout must be NCHW or NHWC, not {layout}")
    if len(shape) != 4 or shape[0] != 1 or shape[layout.index("C")] != 3:
        raise UserError(f"{where}: shape {list(shape)} is not a 1x3xHxW image in {layout}")
    color = _take(t, "color", str, where)
    if color not in ("RGB", "BGR"):
        raise UserError(f"{where}: color must be RGB or BGR, not {color}")
    return TensorSpec(_take(t, "name", str, where), layout, shape, color)


def _parse_step(t: dict, where: str) -> Step:
    op = _take(t, "op", str, where)
    if op not in PREPROCESS_OPS:
        raise UserError(f"{where}: unknown preprocessing op '{op}'")
    no_extra(t, PREPROCESS_OPS[op] | {"op"}, where)
    for key in PREPROCESS_OPS[op] - {"interpolation"}:
        value = cast(float, take(t, key, (int, float), where))  # int or float: take checked
        if value <= 0 or (key == "fraction" and value > 1):
            raise UserError(f"{where}: '{key}' out of range ({value})")
    interpolation = t.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"{where}: interpolation must be one of {INTERPOLATIONS}")
    return Step(**t)


def _parse_source(t: dict, where: str) -> WeightsSource:
    keys = {"architecture", "weights_file", "weights_sha256", "mean", "scale",
            "weights_url", "weights_package"}
    no_extra(t, keys, where)
    for key in ("mean", "scale"):
        if len(_take(t, key, list, where)) != 3:
            raise UserError(f"{where}: '{key}' needs three values")
    sha = _take(t, "weights_sha256", str, where)
    if len(sha) != 64:
        raise UserError(f"{where}: weights_sha256 is not a sha256 hex digest")
    if not (t.get("weights_url") or t.get("weights_package")):
        raise UserError(f"{where}: needs weights_url or weights_package")
    return WeightsSource(**{**t, "mean": tuple(t["mean"]), "scale": tuple(t["scale"])})


def parse_spec(data: dict, where: str) -> ModelSpec:
    """Validate one model file's contents; every error names the file and the key."""
    no_extra(data, {"name", "description", "class_names", "input", "output", "preprocess", "source",
                     "card"}, where)
    tensor = _parse_input(_take(data, "input", dict, where), f"{where} [input]")
    out = _take(data, "output", dict, where)
    no_extra(out, {"name", "kind", "classes"}, f"{where} [output]")
    if _take(out, "kind", str, where) != "logits":
        raise UserError(f"{where} [output]: only 'logits' outputs are supported")
    output = OutputSpec(_take(out, "name", str, where), "logits",
                        _take(out, "classes", int, where))
    steps = tuple(_parse_step(s, f"{where} [[preprocess]]")
                  for s in _take(data, "preprocess", list, where))
    last_sized = [s for s in steps if s.op in ("resize", "center_crop")]
    if not last_sized or (last_sized[-1].width, last_sized[-1].height) != (tensor.width,
                                                                          tensor.height):
        raise UserError(f"{where}: preprocessing must end at the input size "
                        f"{tensor.width}x{tensor.height}")
    if steps[-1].op not in ("resize", "center_crop"):
        raise UserError(f"{where}: the last preprocessing step must fix the size")
    card = data.get("card")
    class_names = _take(data, "class_names", str, where)
    if not resources.files("effnet_ray").joinpath("data", class_names).is_file():
        raise UserError(f"{where}: class names file '{class_names}' is not in effnet_ray/data")
    return ModelSpec(
        name=_take(data, "name", str, where),
        description=_take(data, "description", str, where),
        class_names=class_names,
        input=tensor,
        output=output,
        preprocess=steps,
        source=_parse_source(_take(data, "source", dict, where), f"{where} [source]"),
        card=Card(**card) if card else None,
    )


@cache
def all_specs() -> dict[str, ModelSpec]:
    specs = {}
    for path in sorted((configs_dir() / "models").glob("*.toml")):
        spec = parse_spec(read_toml(path), str(path))
        if spec.name != path.stem:
            raise UserError(f"{path}: name '{spec.name}' differs from the file name")
        specs[spec.name] = spec
    return specs


def get_spec(name: str) -> ModelSpec:
    specs = all_specs()
    if name not in specs:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(specs)}")
    return specs[name]


@cache
def load_class_names(file: str) -> tuple[str, ...]:
    """Class names in index order; a line is `<wnid> <name>, <synonym>, ...`, we keep <name>."""
    text = resources.files("effnet_ray").joinpath("data", file).read_text()
    return tuple(line.split(" ", 1)[1].split(",")[0].strip() for line in text.splitlines() if line)


@cache
def load_wnids(file: str) -> tuple[str, ...]:
    """WordNet ids in index order (the first word of each line): ImageNet's class folders."""
    text = resources.files("effnet_ray").joinpath("data", file).read_text()
    return tuple(line.split(" ", 1)[0] for line in text.splitlines() if line)
