"""`effnet-ray`: models list|prepare, label, demo, evaluate, report. Every user error is one
line on stderr."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from effnet_ray.errors import UserError
from effnet_ray.run.console import NativeStderrFilter

DEMO_MODEL = "efficientnet-lite0"
PHOTOS = Path(__file__).parent / "data" / "photos"
log = logging.getLogger("effnet_ray")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage plus message
        raise UserError(f"{message} (see {self.prog} --help)")


def _with_default(text: str, name: str) -> str:
    """Help text quoting the option's default from `options`, where all defaults live."""
    from effnet_ray.options import default

    return f"{text} (default {default(name)})"


def _add_label_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (recursive) or glob patterns, local or URIs")
    p.add_argument("--output", "-o", required=True,
                   help="folder for the Parquet files (not an input, nor a folder holding one)")
    p.add_argument("--model", help=_with_default("model name", "model"))
    p.add_argument("--model-path", help="an IR (.xml) to use instead of the prepared one")
    p.add_argument("--device",
                   help=_with_default("OpenVINO device: CPU, GPU, GPU.N, AUTO...", "device"))
    p.add_argument("--precision",
                   help=_with_default("f32, bf16, f16, auto (the device's default) or int8 "
                                      "(the model from `models quantize`)", "precision"))
    p.add_argument("--top-k", type=int, help=_with_default("classes kept per image", "top_k"))
    p.add_argument("--batch-size", type=int,
                   help=_with_default("images per inference-actor call, committed together as "
                                      "one output file (OpenVINO gets one image per request)",
                                      "batch_size"))
    p.add_argument("--pool", help="a pool profile from configs/pools (cpu, cpu-pinned, "
                   "intel-gpu...): device and placement in one flag; options given here win")
    p.add_argument("--actors", help=_with_default("OpenVINO actors, or auto (as many as the "
                                                  "cluster holds)", "actors"))
    p.add_argument("--actor-cpus", type=float,
                   help=_with_default("logical CPUs each actor reserves", "actor_cpus"))
    p.add_argument("--actor-gpus", type=float,
                   help="GPUs each actor reserves (default: 1 with --device GPU, else 0)")
    p.add_argument("--actor-resources", metavar="JSON",
                   help='Ray resources an actor needs, e.g. \'{"ov_cpu": 1}\'')
    p.add_argument("--actor-labels", metavar="JSON",
                   help='node labels an actor needs, e.g. \'{"pool": "inference"}\'')
    p.add_argument("--reader-resources", metavar="JSON",
                   help="Ray resources a decoding task needs")
    p.add_argument("--reader-labels", metavar="JSON", help="node labels a decoding task needs")
    p.add_argument("--embeddings", action="store_true", default=None,
                   help="add an embedding column: the pooled features that feed the "
                   "classifier (2560 floats for B7, 1280 for Lite0), from the same inference")
    p.add_argument("--no-logits", action="store_true", default=None,
                   help="leave out the logits column (1000 floats a row) for smaller files")
    p.add_argument("--threads", type=int,
                   help=_with_default("OpenVINO threads per actor (0: all cores)", "threads"))
    p.add_argument("--unit-size", type=int,
                   help=_with_default("image files per read task, on average", "unit_size"))
    p.add_argument("--address", help="an existing Ray cluster, e.g. auto (default: start a "
                   "new local Ray for the run)")
    p.add_argument("--cache-dir", help="prepared models and compiled blobs (default: "
                   "$EFFNET_RAY_CACHE or ~/.cache/effnet-ray on each machine)")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="start over, deleting what an earlier run wrote into --output (a "
                   "folder holding anything else is refused) (default: resume)")
    p.add_argument("--layout", help=_with_default("auto (by extension), files, webdataset or "
                                                  "parquet", "layout"))
    p.add_argument("--image-column",
                   help=_with_default("Parquet inputs: the image bytes column", "image_column"))
    p.add_argument("--id-column",
                   help=_with_default("Parquet inputs: the id column, else row numbers",
                                      "id_column"))
    _add_storage_option(p)
    p.add_argument("--max-pixels", type=int,
                   help=_with_default("larger images, decoded or resized, are error rows",
                                      "max_pixels"))
    p.add_argument("--max-bytes", type=int,
                   help=_with_default("larger files, tar members and Parquet values are error "
                                      "rows, never read whole", "max_bytes"))
    p.add_argument("--stall-timeout", type=float,
                   help=_with_default("seconds without a committed image before the run stops "
                                      "(a rerun resumes)", "stall_timeout"))
    _add_break_lease(p)
    p.add_argument("--fail-on-error", action="store_true", default=None,
                   help="exit non-zero when any image could not be labelled")
    p.add_argument("--progress-seconds", type=float,
                   help=_with_default("seconds between progress lines when stderr is not a "
                                      "terminal (on a terminal: a live bar)",
                                      "progress_seconds"))
    p.add_argument("--verbose", action="store_true", default=None,
                   help="show Ray's own INFO logs and progress output too")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="effnet-ray", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="debug messages, and the traceback behind an error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    models = sub.add_parser("models", help="list or prepare models")
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
    quant.add_argument("--subset-size", type=int, default=300,
                       help="calibration photos used (default 300); a fifth as many more "
                       "are held out for the guard")
    quant.add_argument("--min-agreement", type=float, default=0.9,
                       help="least top-1 agreement with the source IR on held-out photos, "
                       "0-1 (default 0.9; 0 turns the guard off)")
    quant.add_argument("--output", help="folder for model.xml/.bin (default: beside the "
                       "prepared model in the cache, NAME-int8)")
    quant.add_argument("--cache-dir")
    _add_storage_option(quant)
    _add_label_options(sub.add_parser("label", help="label images, write Parquet"))
    demo = sub.add_parser("demo", help=f"label the bundled photos with {DEMO_MODEL}")
    demo.add_argument("--output", default=".demo-output")
    demo.add_argument("--cache-dir")
    evaluate = sub.add_parser("evaluate", help="top-1/top-5 accuracy, per-class accuracy, "
                              "confusions and calibration of an output against ground truth")
    _add_truth_options(evaluate)
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object (fields: see the README)")
    compact = sub.add_parser("compact", help="rewrite a finished output's small part files "
                             "into files of about --target-size, sorted by path")
    _add_output_argument(compact)
    compact.add_argument("--target-size", default="256MB",
                         help="bytes per file, e.g. 256MB or 1GiB (default 256MB)")
    _add_break_lease(compact)
    report = sub.add_parser("report", help="one self-contained HTML page about an output")
    _add_truth_options(report)
    report.add_argument("--html", required=True, metavar="FILE", help="the page to write")
    return parser


def _add_storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", metavar="JSON",
                   help="extra fsspec options for remote stores (never logged)")


def _add_break_lease(p: argparse.ArgumentParser) -> None:
    p.add_argument("--break-lease", action="store_true", default=None,
                   help="take the output over from a run that holds it (only when that run is "
                   "known to be gone)")


def _add_output_argument(p: argparse.ArgumentParser) -> None:
    """OUT and the options to reach it, for the commands that read an output."""
    p.add_argument("output", metavar="OUT", help="an output folder of `effnet-ray label`")
    _add_storage_option(p)


def _add_truth_options(p: argparse.ArgumentParser) -> None:
    _add_output_argument(p)
    p.add_argument("--ground-truth", metavar="FILE",
                   help="CSV with path and class_id columns, or ImageNet's `NAME CLASS_ID` "
                   "lines (default: WebDataset .cls and ImageNet class folders only)")


def evaluate(args: argparse.Namespace) -> None:
    import json

    from effnet_ray.options import parse_json_object
    from effnet_ray.results.evaluate import describe
    from effnet_ray.results.evaluate import evaluate as run_evaluation

    result = run_evaluation(args.output, args.ground_truth,
                            parse_json_object("storage-options", args.storage_options))
    print(json.dumps(result.to_dict()) if args.json else describe(result))


def compact(args: argparse.Namespace) -> None:
    from effnet_ray.options import parse_json_object
    from effnet_ray.output.compaction import compact as run_compaction
    from effnet_ray.output.compaction import parse_size

    files, rows = run_compaction(args.output, parse_size(args.target_size),
                                 parse_json_object("storage-options", args.storage_options),
                                 bool(args.break_lease))
    print(f"compacted {rows} rows into {files} files" if files
          else f"nothing to compact: {rows} rows are compacted already")


def report(args: argparse.Namespace) -> None:
    from effnet_ray.options import parse_json_object
    from effnet_ray.results.report import write_report

    path = write_report(args.output, args.html, args.ground_truth,
                        parse_json_object("storage-options", args.storage_options))
    print(f"report: {path}")


def _cache(args: argparse.Namespace) -> Path:
    from effnet_ray.models.cache import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def models_list(args: argparse.Namespace) -> None:
    from effnet_ray.models.cache import int8_path, prepared_path
    from effnet_ray.models.registry import all_specs

    cache = _cache(args)
    for name, spec in all_specs().items():
        path = prepared_path(cache, name)
        state = f"prepared: {path}" if path.is_file() else "not prepared"
        if int8_path(path).is_file():
            state += f"; INT8: {int8_path(path)}"
        print(f"{name:28} {spec.input.layout} {spec.input.color} "
              f"{spec.input.width}x{spec.input.height}  {state}")
        print(f"{'':28} {spec.description}")


def prepare_model(name: str, cache: Path, weights: Path | None = None,
                  weights_url: str | None = None, random_seed: int | None = None,
                  verify: bool = True, force: bool = False) -> Path:
    from effnet_ray.models.cache import prepared_path
    from effnet_ray.models.ir import check_contract, read_ir
    from effnet_ray.models.registry import get_spec
    from effnet_ray.prepare.convert import prepare
    from effnet_ray.prepare.weights import resolve_weights

    spec = get_spec(name)
    dest = prepared_path(cache, name, random_seed)
    if dest.is_file() and not force:
        try:
            check_contract(read_ir(dest), spec, str(dest))
        except UserError as exc:
            raise UserError(f"{exc} (rebuild it with --force)") from None
        return dest
    if random_seed is None:
        weights = resolve_weights(spec, cache, weights, weights_url, verify)
    return prepare(spec, dest, weights, random_seed)


def models_prepare(args: argparse.Namespace) -> None:
    from effnet_ray.models.complexity import complexity
    from effnet_ray.models.ir import read_ir

    path = prepare_model(args.name, _cache(args), args.weights, args.weights_url,
                         args.seed if args.random_weights else None, not args.no_verify,
                         args.force)
    params, flops = complexity(read_ir(path))
    print(f"{args.name}: {path} ({params / 1e6:.3f} MParams, {flops / 1e9:.3f} GFLOPs)")


def _run_label(inputs: list[str], output: str, **given: object) -> object:
    from effnet_ray.options import build_options
    from effnet_ray.run.job import run
    from effnet_ray.run.preflight import prepare_run
    from effnet_ray.run.progress import reporter_for

    options = build_options(inputs, output, **given)
    plan = prepare_run(options)
    return run(plan, reporter_for(sys.stderr, options.run.progress_seconds))


def models_quantize(args: argparse.Namespace) -> None:
    from effnet_ray.models.cache import int8_path, prepared_path
    from effnet_ray.models.registry import get_spec
    from effnet_ray.options import parse_json_object
    from effnet_ray.prepare.quantize import quantize

    spec = get_spec(args.name)
    source = Path(args.model_path).expanduser().resolve() if args.model_path \
        else prepared_path(_cache(args), spec.name)
    if not source.is_file():
        raise UserError(f"model {spec.name} is not prepared in {_cache(args)}: run "
                        f"`effnet-ray models prepare {spec.name}` or pass --model-path")
    dest = Path(args.output) / "model.xml" if args.output else int8_path(source)
    path, guard = quantize(spec, source, args.calibration, dest, args.subset_size,
                           args.min_agreement,
                           parse_json_object("storage-options", args.storage_options))
    checked = (f"; top-1 agrees with {source.name} on {guard.top1_agreement:.0%} of "
               f"{guard.held_out} held-out photos, top-5 overlap {guard.top5_overlap:.0%}"
               if guard.held_out else "")
    print(f"{args.name} INT8: {path}{checked}")


def label(args: argparse.Namespace) -> None:
    given = {k: v for k, v in vars(args).items()
             if k not in ("command", "inputs", "output", "debug")}
    summary = _run_label(args.inputs, args.output, **given)
    print(summary)
    if args.fail_on_error and summary.errors:
        raise UserError(f"{summary.errors} images could not be labelled (--fail-on-error); "
                        "their reasons are in the error column")


def demo(args: argparse.Namespace) -> None:
    import pyarrow.dataset as pads

    cache = _cache(args)
    prepare_model(DEMO_MODEL, cache)
    summary = _run_label([str(PHOTOS)], args.output, model=DEMO_MODEL, cache_dir=str(cache),
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
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
        if args.command == "models":
            {"list": models_list, "prepare": models_prepare,
             "quantize": models_quantize}[args.models_command](args)
        else:
            {"label": label, "demo": demo, "evaluate": evaluate, "report": report,
             "compact": compact}[args.command](args)
    except UserError as exc:
        if debug and (exc.__cause__ or exc.__context__):
            traceback.print_exception(exc.__cause__ or exc.__context__, file=sys.stderr)
        print(f"effnet-ray: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("effnet-ray: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback with --debug
        if debug:
            traceback.print_exc()
        from effnet_ray.storage import short_reason

        print(f"effnet-ray: internal error: {short_reason(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 1
    return 0


def entry_point(argv: list[str] | None = None) -> None:
    """Exit without interpreter finalisation once everything is flushed.

    Ray and pyarrow's native threads can abort at interpreter exit after a finished job
    (ray-project/ray#49088; seen once here as a stack trace and a non-zero exit), which would
    turn a successful run into a failed one. Ray is already shut down when main returns.
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
