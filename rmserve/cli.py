"""The `rmserve` command: train, export, import, quantize, eval, serve, data. The one module above both halves: it
dispatches to the server (`rmserve.service`) and to training (`rmserve.training`).

Every subcommand imports what it needs only when it runs, so each install shape keeps a working command:
the base (client) install answers --help and names the extra a subcommand needs, a `serve` install runs
`rmserve serve`, `eval` and `quantize`, and the `train` extra adds training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import types
import typing
from typing import Any

EXTRA_FOR = {"serve": "serve", "eval": "serve", "quantize": "train", "train": "train", "export": "train",
             "data": "train", "import": "train"}


def _add_dataclass_options(parser: argparse.ArgumentParser, cls: type, only: tuple[str, ...] | None = None) -> None:
    """One option per field of `cls` (only those of the --help sections in `only`, when given)."""
    hints = typing.get_type_hints(cls)
    sections: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        group_name = f.metadata.get("group")
        if only is not None and group_name not in only:
            continue
        target = sections.setdefault(group_name, parser.add_argument_group(group_name)) if group_name else parser
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = hints[f.name]
        if kind is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        if isinstance(kind, types.UnionType):  # "int | None" -> int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default_text = "" if f.default is None else f" (default: {f.default})"
        target.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                            help=help_text + default_text)


def _add_settings_options(parser: argparse.ArgumentParser) -> None:
    try:
        from rmserve.service.settings import Settings
    except ImportError:  # a client-only install: take any options; `rmserve serve` says which extra it needs
        parser.description = (parser.description or "") + " Needs the server: pip install 'rmserve[serve]'."
        parser.set_defaults(takes_any_options=True)
        return

    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = "RMSERVE_" + name.upper()
        secret = name in ("api_keys", "admin_api_keys")
        default = "" if secret else info.default
        note = " Prefer the environment or a file: a command line is visible to every user of the machine." if secret else ""
        # A boolean setting given alone (--allow-unauthenticated) means true; it also takes a value.
        switch = {"nargs": "?", "const": "true", "metavar": "BOOL"} if info.annotation is bool else {}
        parser.add_argument(flag, default=None, help=f"{info.description or ''}{note} [env {env}; default {default!r}]",
                            **switch)


def _cmd_train(args: argparse.Namespace) -> int:
    from rmserve.training.train import TrainConfig, train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    try:
        train(config)
    except (ValueError, FileNotFoundError) as e:  # DataError is a ValueError: names file, line and field
        print(f"rmserve train: {e}", file=sys.stderr)
        return 2
    if args.export_to and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 exports
        from rmserve.training.export import export_bundle

        export_bundle(config.output_dir, args.export_to, dev_data=config.dev_data, limit_dev=config.limit_dev)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from rmserve.training.export import export_bundle

    export_bundle(args.checkpoint, args.output, dev_data=args.dev_data, limit_dev=args.limit_dev)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from rmserve.training.export import ExportError
    from rmserve.training.importer import import_fp16, import_model
    from rmserve.training.quantize import VariantRefused

    options = {"max_length": args.max_length, "external_data": args.external_data, "limit_dev": args.limit_dev}
    if args.precision == "fp16" and not args.preferences:
        print("rmserve import: --precision fp16 needs --preferences: the fp16 model is accepted only if it keeps "
              "the fp32 preference on those pairs", file=sys.stderr)
        return 2
    try:
        if args.precision == "fp16":
            bundle, report = import_fp16(args.source, args.output, args.preferences, args.min_agreement, args.device,
                                         **options)
            print(f"fp16 bundle {bundle.manifest.bundle_id} written to {args.output}: agrees with fp32 on "
                  f"{report['agreement_with_fp32']:.2%} of {report['pairs']} pairs; max |reward diff| "
                  f"{report['max_abs_reward_diff']:.3g}")
        else:
            print(import_model(args.source, args.output, args.preferences, **options).summary())
    except (ExportError, VariantRefused) as e:
        print(f"rmserve import: refused: {e}", file=sys.stderr)
        return 1
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from rmserve.training.quantize import VariantRefused, make_variant
    from rmserve.training.ratings import RatingOptions

    try:
        bundle, report = make_variant(args.bundle, args.output, args.precision, args.dev_data, args.min_agreement,
                                      args.device, RatingOptions.from_config(args))
    except VariantRefused as e:
        print(f"rmserve quantize: {e}", file=sys.stderr)
        return 1
    print(f"{args.precision} bundle {bundle.manifest.bundle_id} written to {args.output}: agrees with fp32 on "
          f"{report['agreement_with_fp32']:.2%} of {report['pairs']} dev pairs; accuracy "
          f"{report['accuracy_variant']:.4f} (fp32 {report['accuracy_fp32']:.4f})")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from rmserve.training.evaluate import format_summary, run_evaluation

    if args.train_log and not args.report:
        print("rmserve eval: --train-log is read only for --report", file=sys.stderr)
        return 2
    if args.report:  # find the training log before the slow part, so a wrong path fails at once
        from rmserve.service.core.bundle import load_bundle
        from rmserve.training.report import find_train_log, write_report

        log = find_train_log(load_bundle(args.bundle, verify_hashes=False).manifest.provenance, args.train_log)
    from rmserve.training.ratings import RatingOptions

    metrics, scored = run_evaluation(args.bundle, args.data, args.limit, device=args.device,
                                     ratings=RatingOptions.from_config(args))
    if args.report:
        write_report(args.report, metrics, scored, log)
        print(f"report written to {args.report}", file=sys.stderr)
    print(json.dumps(metrics) if args.json else format_summary(metrics))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from rmserve.service.core.bundle import BundleError, load_bundle
    from rmserve.service.process.runtime import preflight, serve
    from rmserve.service.settings import Settings

    given: dict[str, Any] = {
        name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None
    }
    try:
        settings = Settings(**given)
    except ValidationError as e:
        first = e.errors()[0]
        print(f"rmserve serve: setting '{'.'.join(map(str, first['loc']))}': {first['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    preflight(settings)  # keys readable; no open port on a public address by accident
    try:  # fail fast, with the bundle's own message, before binding ports
        load_bundle(settings.bundle)
    except BundleError as e:
        print(f"rmserve serve: bundle {settings.bundle}: {e}", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings))


def _load_data(args: argparse.Namespace, path: str, skip_bad_rows: bool):
    from rmserve.training.data import load_preferences
    from rmserve.training.ratings import RatingOptions

    loaded = load_preferences(path, skip_bad_rows=skip_bad_rows, ratings=RatingOptions.from_config(args))
    if loaded.ratings:
        print(f"ratings: {loaded.ratings.summary()}", file=sys.stderr)
    return loaded


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from rmserve.training.data_report import convert_to_pairs, format_counts

    loaded = _load_data(args, args.input, args.skip_bad_rows)
    for bad in loaded.skipped:
        print(f"skipped bad row: {bad}", file=sys.stderr)
    counts = convert_to_pairs(loaded, args.output)
    print(f"wrote {args.output}: {format_counts(counts)}")
    return 0


def _data_encoder(args: argparse.Namespace):
    """The bundle's InputEncoder, or a tokenizer's with the default InputSpec; --max-length overrides either."""
    from pydantic import ValidationError
    from tokenizers import Tokenizer

    from rmserve.service.core.inputs import InputEncoder, InputSpec
    from rmserve.training.config import TrainConfig

    if args.bundle:
        from rmserve.service.core.bundle import load_bundle

        bundle = load_bundle(args.bundle, verify_hashes=False)
        spec, tokenizer_path = bundle.manifest.input, bundle.tokenizer_path
    elif args.tokenizer:
        spec, tokenizer_path = InputSpec(max_length=TrainConfig.max_length), args.tokenizer
    elif args.max_length:
        raise ValueError("--max-length needs --bundle or --tokenizer (the length is counted in tokens)")
    else:
        return None
    if args.max_length:
        try:
            spec = InputSpec.model_validate({**spec.model_dump(), "max_length": args.max_length})
        except ValidationError as e:
            raise ValueError(f"--max-length {args.max_length}: {e.errors()[0]['msg']}") from None
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # tokenizers raises a bare Exception on a missing or malformed file
        raise ValueError(f"cannot read tokenizer {tokenizer_path}: {e}") from None
    return InputEncoder(tokenizer, spec)


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from rmserve.training.data_report import format_report, inspect_data

    encoder = _data_encoder(args)
    report = inspect_data(_load_data(args, args.file, skip_bad_rows=True), encoder)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmserve", description="Train, export and serve reward models for RLHF.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="Train a reward model on preference data (Bradley–Terry and variants).",
                           description="Train a reward model on preference pairs, rankings, soft labels or margins "
                           "and save a checkpoint. For several processes, launch it with torchrun "
                           "(e.g. `torchrun --nproc_per_node 2 -m rmserve.cli train ...`).")
    from rmserve.training.config import TrainConfig

    _add_dataclass_options(train, TrainConfig)
    train.add_argument("--export-to", metavar="DIR", default=None,
                       help="After training, export the checkpoint to a bundle in DIR (as `rmserve export`).")
    train.set_defaults(handler=_cmd_train)

    export = sub.add_parser("export", help="Export a checkpoint to an ONNX bundle.",
                            description="Export a trained checkpoint to a bundle (model.onnx, tokenizer.json, "
                            "bundle.json), after checking ONNX Runtime against torch on a padded batch.")
    export.add_argument("--checkpoint", required=True, help="Checkpoint directory written by `rmserve train`.")
    export.add_argument("--output", required=True, help="Bundle directory to write.")
    export.add_argument("--dev-data", default=None,
                        help="Pairs for normalization stats and the dev report (a ratings file is read with the "
                        "rating options the checkpoint was trained with). Default: the checkpoint's dev data.")
    export.add_argument("--limit-dev", type=int, default=None, help="Use only the first N dev pairs.")
    export.set_defaults(handler=_cmd_export)

    importer = sub.add_parser(
        "import", help="Turn an existing Hugging Face reward model directory into a bundle, without training.",
        description="Import a local AutoModelForSequenceClassification directory with one output (BERT, RoBERTa, "
        "DeBERTa-v2, Llama, Qwen2, Qwen3, Mistral, Gemma2) as a verified bundle: its tokenizer checked against "
        "transformers', its chat template carried, ONNX export checked against torch on a padded batch, a golden "
        "set, and provenance (source directory, sha256 of config and weights). Refuses models that need "
        "trust_remote_code, heads with num_labels != 1 and other architectures.")
    importer.add_argument("source", metavar="HF_DIR", help="The model directory (config.json, weights, tokenizer files).")
    importer.add_argument("--output", required=True, help="Bundle directory to write.")
    importer.add_argument("--preferences", metavar="FILE", default=None,
                          help="Preference pairs (as for training) for normalization stats, the calibration "
                          "temperature and the dev report. Without: normalization is the identity, temperature 1, "
                          "and the bundle says so.")
    importer.add_argument("--limit-dev", type=int, default=None, help="Use only the first N preference rows.")
    importer.add_argument("--max-length", type=int, default=None,
                          help="Tokens per row. Default: the model's positions, at most 2048.")
    importer.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                          help="fp16: half precision for CUDA, norms, softmax and head kept in fp32; accepted only if "
                          "it keeps the fp32 preference on --min-agreement of the --preferences pairs.")
    importer.add_argument("--min-agreement", type=float, default=0.99, help="For fp16 (default 0.99).")
    importer.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                          help="Where the fp16 agreement check runs (cuda: in half precision, as it will be served).")
    importer.add_argument("--external-data", action=argparse.BooleanOptionalAction, default=None,
                          help="Weights in model.onnx.data beside the graph. Default: when they reach 1 GiB "
                          "(a protobuf file stops at 2 GB).")
    importer.set_defaults(handler=_cmd_import)

    quantize = sub.add_parser("quantize", help="Make an int8 (CPU) or fp16 (CUDA) variant of a bundle.",
                              description="Write a lower-precision variant of an fp32 bundle, refused unless it "
                              "keeps the fp32 bundle's preference on at least --min-agreement of the dev pairs.")
    quantize.add_argument("--bundle", required=True, help="The fp32 bundle directory.")
    quantize.add_argument("--output", required=True, help="Variant bundle directory to write.")
    quantize.add_argument("--precision", choices=["int8", "fp16"], default="int8",
                          help="int8: dynamic quantization for CPU; fp16: half precision for CUDA.")
    quantize.add_argument("--dev-data", default=None, help="Pairs for the agreement check. Default: shipped dev split.")
    quantize.add_argument("--min-agreement", type=float, default=0.99,
                          help="Least share of dev pairs whose preferred response must stay the same (default 0.99).")
    quantize.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                          help="Where to run the agreement check. fp16 runs on CPU too (ONNX Runtime computes "
                          "what it has no fp16 kernel for in fp32); --device cuda checks it where it is served.")
    _add_dataclass_options(quantize, TrainConfig, only=("ratings",))  # for a ratings --dev-data
    quantize.set_defaults(handler=_cmd_quantize)

    evaluate = sub.add_parser("eval", help="Measure a bundle's accuracy, calibration and length bias.",
                              description="Score preference pairs with the bundle's ONNX model, exactly as the "
                              "service does, and report tie-aware accuracy, log-loss, AUC, calibration error at the "
                              "bundle's temperature, accuracy by length, reward-length correlation and the reward "
                              "distribution; optionally an HTML report with plots.")
    evaluate.add_argument("--bundle", required=True, help="Bundle directory.")
    evaluate.add_argument("--data", default=None, help="Preference data (pairs, rankings or ratings; JSONL(.gz) or a "
                          "saved dataset directory). Default: the shipped HH-RLHF dev split.")
    evaluate.add_argument("--limit", type=int, default=None,
                          help="Use only the first N rows (a ranking row brings all its pairs).")
    evaluate.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="Execution provider.")
    evaluate.add_argument("--json", action="store_true", help="Print the metrics as one JSON object.")
    evaluate.add_argument("--report", metavar="HTML", default=None,
                          help="Also write a self-contained HTML report with plots to this file.")
    evaluate.add_argument("--train-log", default=None,
                          help="Training log (JSONL) for the report's curves. Default: train_log.jsonl in the "
                          "checkpoint named by the bundle's provenance.")
    _add_dataclass_options(evaluate, TrainConfig, only=("ratings",))  # for a ratings --data
    evaluate.set_defaults(handler=_cmd_eval)

    serve = sub.add_parser("serve", help="Serve a bundle over HTTP.",
                           description="Serve POST /score and /compare (plus /healthz, /readyz, /metrics, "
                           "/v1/model). Each option can also be set by its RMSERVE_* environment variable.")
    _add_settings_options(serve)
    serve.set_defaults(handler=_cmd_serve)

    data = sub.add_parser("data", help="Convert preference data to pairs, or report on it before training.",
                          description="Work on training data without a model: `convert` writes ratings or "
                          "rankings as pairs JSONL; `inspect` reports what a reward model could learn from it.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    convert = data_sub.add_parser(
        "convert", help="Write any accepted data file (ratings, rankings, pairs) as pairs JSONL.",
        description="Write every comparison of IN as one {prompt, chosen, rejected, label, margin, source} line "
        "of OUT (.gz to compress), and print the counts: pairs, ties, prompts, rows, tied pairs and bad rows "
        "dropped, single-response prompts. Ratings are grouped by prompt and rater as in training (--rating-* "
        "below). The pairs file trains each pair as its own row; IN read directly keeps a prompt's "
        "comparisons together as one listwise group.")
    convert.add_argument("input", metavar="IN", help="JSONL(.gz) data file or save_to_disk directory.")
    convert.add_argument("output", metavar="OUT", help="Pairs JSONL file to write (.jsonl or .jsonl.gz).")
    convert.add_argument("--skip-bad-rows", action="store_true",
                         help="Leave out rows that fail validation (each reported) instead of stopping at the first.")
    from rmserve.training.config import TrainConfig

    _add_dataclass_options(convert, TrainConfig, only=("ratings",))
    convert.set_defaults(handler=_cmd_data_convert)

    inspect = data_sub.add_parser(
        "inspect", help="Report on a data file before training: labels, length bias, duplicates, truncation.",
        description="Report the rows, prompts, pairs and ties of FILE; its label distribution; response "
        "lengths of chosen and rejected and how often the preferred response is the longer one (the accuracy "
        "a model gets from length alone); duplicate pairs and contradictory ones (same prompt and responses, "
        "opposite preference); with --bundle or --tokenizer, token lengths and the rows --max-length "
        "truncates, tokenized and truncated exactly as training and serving do. Bad rows are listed, not fatal.")
    inspect.add_argument("file", metavar="FILE", help="JSONL(.gz) data file or save_to_disk directory.")
    tokens = inspect.add_mutually_exclusive_group()
    tokens.add_argument("--bundle", metavar="DIR", default=None,
                        help="Count tokens and truncation with this bundle's tokenizer and input spec.")
    tokens.add_argument("--tokenizer", metavar="TOKENIZER_JSON", default=None,
                        help="Count tokens with this tokenizer.json and the default input spec (encoder pair "
                        "template; use --bundle for a decoder's exact rows).")
    inspect.add_argument("--max-length", type=int, default=None,
                         help="Tokens per row to check truncation against. Default: the bundle's max_length, "
                         f"or {TrainConfig.max_length} with --tokenizer.")
    inspect.add_argument("--json", action="store_true", help="Print the report as one JSON object.")
    _add_dataclass_options(inspect, TrainConfig, only=("ratings",))
    inspect.set_defaults(handler=_cmd_data_inspect)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix (a bad path, bundle, row or option): one line, exit code 2."""
    errors: list[type[Exception]] = [FileNotFoundError, ValueError]  # ValueError: DataError and bad options
    try:
        from rmserve.service.core.bundle import BundleError
    except ImportError:  # no server install
        pass
    else:
        errors.append(BundleError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "takes_any_options", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args)
    except ImportError as e:
        extra = EXTRA_FOR.get(args.command, "serve")
        print(f"rmserve {args.command}: needs the '{extra}' extra (pip install 'rmserve[{extra}]'): {e}",
              file=sys.stderr)
        return 2
    except Exception as e:
        if isinstance(e, _user_errors()):
            print(f"rmserve {args.command}: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
