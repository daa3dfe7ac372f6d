"""`effnet-ray`: models list|prepare|quantize, label, demo, evaluate, report, compact.
Every user error is one line on stderr."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pyarrow.dataset as pads

import effnet_ray
from effnet_ray.errors import STOP_SIGNALS, Terminated, UserError
from effnet_ray.models.cache import default_cache_dir, int8_path, prepared_path
from effnet_ray.models.complexity import complexity
from effnet_ray.models.ir import read_ir
from effnet_ray.models.registry import PHOTOS, all_specs, get_spec
from effnet_ray.options import GROUPS, LabelOptions, parse_json_object
from effnet_ray.output.compaction import DEFAULT_TARGET, compact, parse_size
from effnet_ray.prepare.quantize import MIN_AGREEMENT, SUBSET_SIZE, quantize
from effnet_ray.results.evaluate import describe, evaluate
from effnet_ray.results.report import write_report
from effnet_ray.run.console import NativeStderrFilter
from effnet_ray.run.progress import reporter_for
from effnet_ray.storage import short_reason

if TYPE_CHECKING:
    from effnet_ray.run.job import Summary

DEMO_MODEL = "efficientnet-lite0"
log = logging.getLogger("effnet_ray")
# How a field's annotation becomes a flag's type; anything else is text.
_FLAG_TYPES = {"int": int, "float": float, "float | None": float}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage plus message
        raise UserError(f"{message} (see {self.prog} --help)")


def _flag_help(f: Field) -> str:
    shown = f.metadata["shown"]
    if shown is None:
        shown = "off" if f.type == "bool" else f.default if f.default is not MISSING else "none"
    return f"{f.metadata['help']} (default: {shown})"


def _add_label_options(p: argparse.ArgumentParser) -> None:
    """One flag per option field, in the order of the groups: name, type, help and default
    come from the field, so an option is added in `options` alone. Every flag defaults to
    None: `LabelOptions.build` tells given from not given."""
    top = {f.name: f for f in fields(LabelOptions)}
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=top["inputs"].metadata["help"])
    p.add_argument("--output", "-o", required=True, help=top["output"].metadata["help"])
    for group in GROUPS.values():
        for f in fields(group):
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":
                p.add_argument(flag, action="store_true", default=None, help=_flag_help(f))
            else:
                p.add_argument(flag, type=_FLAG_TYPES.get(str(f.type), str), help=_flag_help(f),
                               metavar="JSON" if f.type == "dict" else None)
    _add_storage_option(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="effnet-ray", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="debug messages, and the traceback behind an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    models = sub.add_parser("models", help="list, prepare or quantize models")
    msub = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    msub.add_parser("list", help="known models and whether they are prepared") \
        .add_argument("--cache-dir")
    prep = msub.add_parser("prepare", help="build a model's OpenVINO IR into the cache")
    prep.add_argument("name")
    prep.add_argument("--weights", type=Path, help="use this weights file instead of downloading")
    prep.add_argument("--weights-url", help="download the weights from this URL instead")
    prep.add_argument("--random-weights", action="store_true",
                      help="seeded random weights (tests, benchmarks): labels mean nothing")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--no-verify", action="store_true",
                      help="accept a --weights file whose checksum differs")
    prep.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    prep.add_argument("--cache-dir")
    quant = msub.add_parser("quantize", help="an INT8 IR calibrated on your photos, kept only "
                            "if it agrees with its source on held-out photos")
    quant.add_argument("name")
    quant.add_argument("--calibration", nargs="+", required=True, metavar="INPUT",
                       help="photos: any inputs `label` accepts (folders, shards, URIs)")
    quant.add_argument("--model-path", help="the IR to quantize (default: the prepared one)")
    quant.add_argument("--subset-size", type=int, default=SUBSET_SIZE,
                       help=f"calibration photos used (default {SUBSET_SIZE}); a fifth as many "
                       "more are held out for the guard")
    quant.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                       help="least top-1 agreement with the source IR on held-out photos, "
                       f"0-1 (default {MIN_AGREEMENT}; 0 turns the guard off)")
    quant.add_argument("--output", help="folder for model.xml/.bin (default: beside the "
                       "prepared model in the cache, NAME-int8)")
    quant.add_argument("--cache-dir")
    _add_storage_option(quant)
    _add_label_options(sub.add_parser("label", help="label images, write Parquet"))
    demo = sub.add_parser("demo", help=f"label the bundled photos with {DEMO_MODEL}")
    demo.add_argument("--output", default=".demo-output")
    demo.add_argument("--cache-dir")
    evaluation = sub.add_parser("evaluate", help="top-1/top-5 accuracy, per-class accuracy, "
                                "confusions and calibration of an output against ground truth")
    _add_truth_options(evaluation)
    evaluation.add_argument("--json", action="store_true",
                            help="print one JSON object (fields: see the README)")
    compaction = sub.add_parser("compact", help="rewrite a finished output's small part files "
                                "into files of about --target-size, sorted by path")
    _add_output_argument(compaction)
    compaction.add_argument("--target-size", default=str(DEFAULT_TARGET),
                            help="bytes per file, e.g. 256MB or 1GiB "
                            f"(default {DEFAULT_TARGET // 10**6}MB)")
    _add_break_lease(compaction)
    report = sub.add_parser("report", help="one self-contained HTML page about an output")
    _add_truth_options(report)
    report.add_argument("--html", required=True, metavar="FILE", help="the page to write")
    return parser


def _add_storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", metavar="JSON",
                   help="extra fsspec options for remote stores (never logged)")


def _add_break_lease(p: argparse.ArgumentParser) -> None:
    p.add_argument("--break-lease", action="store_true",
                   help=next(f for f in fields(GROUPS["run"])
                             if f.name == "break_lease").metadata["help"])


def _add_output_argument(p: argparse.ArgumentParser) -> None:
    """OUT and the options to reach it, for the commands that read an output."""
    p.add_argument("output", metavar="OUT", help="an output folder of `effnet-ray label`")
    _add_storage_option(p)


def _add_truth_options(p: argparse.ArgumentParser) -> None:
    _add_output_argument(p)
    p.add_argument("--ground-truth", metavar="FILE",
                   help="CSV with path and class_id columns, or ImageNet's `NAME CLASS_ID` "
                   "lines (default: WebDataset .cls and ImageNet class folders only)")


def _storage(args: argparse.Namespace) -> dict:
    return parse_json_object("storage-options", args.storage_options)


def _cache(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def evaluate_command(args: argparse.Namespace) -> None:
    result = evaluate(args.output, args.ground_truth, _storage(args))
    print(json.dumps(result.to_dict()) if args.json else describe(result))


def compact_command(args: argparse.Namespace) -> None:
    files, rows = compact(args.output, parse_size(args.target_size), _storage(args),
                          args.break_lease)
    print(f"compacted {rows} rows into {files} files" if files
          else f"nothing to compact: {rows} rows are compacted already")


def report_command(args: argparse.Namespace) -> None:
    print(f"report: {write_report(args.output, args.html, args.ground_truth, _storage(args))}")


def models_list(args: argparse.Namespace) -> None:
    cache = _cache(args)
    for name, spec in all_specs().items():
        path = prepared_path(cache, name)
        state = f"prepared: {path}" if path.is_file() else "not prepared"
        if int8_path(path).is_file():
            state += f"; INT8: {int8_path(path)}"
        print(f"{name:28} {spec.input.layout} {spec.input.color} "
              f"{spec.input.width}x{spec.input.height}  {state}")
        print(f"{'':28} {spec.description}")


def _prepare_model(name: str, cache: Path, weights: Path | None = None,
                   weights_url: str | None = None, random_seed: int | None = None,
                   verify: bool = True, force: bool = False) -> Path:
    # The convert extra (PyTorch) loads only for the commands that build a model.
    try:
        from effnet_ray.prepare.convert import prepare_model
    except ImportError as exc:
        raise UserError(f"building a model needs the convert extra ({exc.name} is missing): "
                        "pip install 'effnet-ray[convert]'") from None
    return prepare_model(name, cache, weights, weights_url, random_seed, verify, force)


def models_prepare(args: argparse.Namespace) -> None:
    path = _prepare_model(args.name, _cache(args), weights=args.weights,
                          weights_url=args.weights_url,
                          random_seed=args.seed if args.random_weights else None,
                          verify=not args.no_verify, force=args.force)
    params, flops = complexity(read_ir(path))
    print(f"{args.name}: {path} ({params / 1e6:.3f} MParams, {flops / 1e9:.3f} GFLOPs)")


def models_quantize(args: argparse.Namespace) -> None:
    spec = get_spec(args.name)
    source = Path(args.model_path).expanduser().resolve() if args.model_path \
        else prepared_path(_cache(args), spec.name)
    if not source.is_file():
        raise UserError(f"model {spec.name} is not prepared in {_cache(args)}: run "
                        f"`effnet-ray models prepare {spec.name}` or pass --model-path")
    dest = Path(args.output) / "model.xml" if args.output else int8_path(source)
    path, guard = quantize(spec, source, args.calibration, dest, args.subset_size,
                           args.min_agreement, _storage(args))
    checked = (f"; top-1 agrees with {source.name} on {guard.top1_agreement:.0%} of "
               f"{guard.held_out} held-out photos, top-5 overlap {guard.top5_overlap:.0%}"
               if guard.held_out else "")
    print(f"{args.name} INT8: {path}{checked}")


def _label(inputs: list[str], output: str, **flags: object) -> Summary:
    options = LabelOptions.build(inputs, output, **flags)
    # through the package's face, which loads Ray only now: every other command starts
    # without it
    return effnet_ray.label(options,
                            progress=reporter_for(sys.stderr, options.run.progress_seconds))


def label_command(args: argparse.Namespace) -> None:
    flags = {k: v for k, v in vars(args).items()
             if k not in ("command", "inputs", "output", "debug")}
    summary = _label(args.inputs, args.output, **flags)
    print(summary)
    if args.fail_on_error and summary.errors:
        raise UserError(f"{summary.errors} images could not be labelled (--fail-on-error); "
                        "their reasons are in the error column")


def demo_command(args: argparse.Namespace) -> None:
    cache = _cache(args)
    _prepare_model(DEMO_MODEL, cache)
    summary = _label([str(PHOTOS)], args.output, model=DEMO_MODEL, cache_dir=str(cache),
                     overwrite=True)
    table = pads.dataset(args.output, format="parquet").to_table(
        columns=["path", "class_id", "label", "top_k_probs", "error"]).to_pylist()
    print(f"\n{'file':24} {'class':>5}  {'label':28} {'prob':>5}")
    for row in sorted(table, key=lambda r: r["path"]):
        name = Path(row["path"]).name
        if row["error"]:
            print(f"{name:24} {'-':>5}  error: {row['error']}")
        else:
            print(f"{name:24} {row['class_id']:>5}  {row['label']:28} "
                  f"{row['top_k_probs'][0]:5.2f}")
    print(f"\n{summary}")


COMMANDS = {"label": label_command, "demo": demo_command, "evaluate": evaluate_command,
            "report": report_command, "compact": compact_command}
MODELS_COMMANDS = {"list": models_list, "prepare": models_prepare, "quantize": models_quantize}


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


class _Format(logging.Formatter):
    """Progress as it is; warnings and worse say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def _install_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv  # anywhere on the line, before or after the command
    _install_logging(debug)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _terminate)
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
        if args.command == "models":
            MODELS_COMMANDS[args.models_command](args)
        else:
            COMMANDS[args.command](args)
    except UserError as exc:
        if debug and (exc.__cause__ or exc.__context__):
            traceback.print_exception(exc.__cause__ or exc.__context__, file=sys.stderr)
        print(f"effnet-ray: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as stop:
        print("effnet-ray: terminated; rerun the same command to resume", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("effnet-ray: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback with --debug
        if debug:
            traceback.print_exc()
        print(f"effnet-ray: internal error: {short_reason(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
    return 0


def entry_point(argv: list[str] | None = None) -> None:
    """Exit without interpreter finalisation once everything is flushed.

    Ray and pyarrow's native threads can abort at interpreter exit after a finished job
    (ray-project/ray#49088), which would turn a successful run into a failed one. Ray is
    already shut down when main returns.
    """
    argv = sys.argv[1:] if argv is None else argv
    quiet = None if "--verbose" in argv else NativeStderrFilter()
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    if quiet:
        quiet.close()
    os._exit(code)


if __name__ == "__main__":
    entry_point()
