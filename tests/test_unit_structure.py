"""The shape of the package: stages import downward only, no import circles, no import of
the package's own modules hidden inside a function, and `label`'s flags made from the option
fields."""

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from effnet_ray.cli import build_parser
from effnet_ray.options import GROUPS

pytestmark = pytest.mark.unit  # pure parts and single stages, without Ray

PACKAGE = Path(__file__).resolve().parent.parent / "effnet_ray"
# Each package (or top-level module) may import its own layer and the layers below it.
LAYERS = {"errors": 0, "storage": 0, "models": 1, "options": 2, "effnet_ray": 2, "inputs": 3,
          "output": 4, "run": 5, "prepare": 6, "results": 6, "api": 7, "cli": 8}
# Imported inside a function on purpose: it needs the optional `convert` extra (PyTorch),
# which only the commands that build a model may load.
OPTIONAL_EXTRA_MODULES = {"effnet_ray.prepare.convert"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module) -> tuple[list[str], list[str]]:
    """(module-level imports, imports inside functions) of effnet_ray modules; those for
    type checkers alone never run and are left out."""
    top, inner = [], []
    typing_only = {id(n) for block in tree.body if isinstance(block, ast.If)
                   and ast.unparse(block.test) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("effnet_ray"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("effnet_ray")]
        else:
            continue
        (top if node in tree.body else inner).extend(names)
    return top, inner


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "effnet_ray"]


GRAPH = {}
INNER = {}
for _path in sorted(PACKAGE.rglob("*.py")):
    _top, _inner = _imports(ast.parse(_path.read_text()))
    GRAPH[_module(_path)] = sorted(set(_top))
    INNER[_module(_path)] = sorted(set(_inner))


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_own_stage_and_those_below(module):
    upward = [m for m in GRAPH[module] if _layer(m) > _layer(module)]
    assert not upward, f"{module} imports a later stage: {upward}"


def test_no_import_circle():
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in GRAPH.get(module, []):
            assert state.get(target) != "open", " -> ".join(trail + [module, target])
            if target not in state:
                visit(target, trail + [module])
        state[module] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [])


def test_no_module_of_the_package_is_imported_inside_a_function():
    hidden = {m: [i for i in inner if i not in OPTIONAL_EXTRA_MODULES]
              for m, inner in INNER.items()}
    assert not {m: i for m, i in hidden.items() if i}


def _label_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["label"]


def test_every_option_field_is_a_label_flag_with_its_help_and_default():
    flags = {a.dest: a for a in _label_parser()._actions}
    for group in GROUPS.values():
        for f in fields(group):
            assert f.name in flags, f"--{f.name} is missing"
            action = flags[f.name]
            assert action.default is None  # LabelOptions.build tells given from not given
            assert f.metadata["help"] in action.help and "(default: " in action.help


def test_the_top_help_names_every_command():
    text = build_parser().format_help()
    for command in ("models", "label", "demo", "evaluate", "report", "compact"):
        assert command in text
    models = next(a for a in build_parser()._actions if a.dest == "command").choices["models"]
    assert all(c in models.format_help() for c in ("list", "prepare", "quantize"))
    assert "quantize" in build_parser().description and "compact" in build_parser().description
