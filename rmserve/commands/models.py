"""The subcommands that build and measure bundles: train, export, import, quantize, eval. Each imports
training (torch, transformers) or the server only when it runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from rmserve.commands.options import add_dataclass_options, at_least_one


def _cmd_train(args: argparse.Namespace) -> int:
    from rmserve.training.train import TrainConfig, train

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if config.step_causal and config.task != "prm":  # an outcome model pools one position: it needs every token
        print("rmserve train: --step-causal is for --task prm", file=sys.stderr)
        return 2
    if config.task == "prm":
        from rmserve.training.train_steps import train_prm as train  # type: ignore[assignment]
    try:
        train(config)
    except (ValueError, FileNotFoundError) as e:  # DataError is a ValueError: names file, line and field
        print(f"rmserve train: {e}", file=sys.stderr)
        return 2
    if args.export_to and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 exports
        _export(config.output_dir, args.export_to, dev_data=config.dev_data, limit_dev=config.limit_dev)
    return 0


def _export(checkpoint: str, output: str, dev_data: str | None, limit_dev: int | None) -> None:
    """An outcome or a process reward model checkpoint to its bundle."""
    from pathlib import Path

    from rmserve.training.step_model import PRM_KIND, checkpoint_kind

    if checkpoint_kind(checkpoint) == PRM_KIND:
        from rmserve.training.export_steps import export_step_bundle

        export_step_bundle(Path(checkpoint), Path(output), dev_data=dev_data, limit_dev=limit_dev)
        return
    from rmserve.training.export import export_bundle

    export_bundle(checkpoint, output, dev_data=dev_data, limit_dev=limit_dev)


def _cmd_export(args: argparse.Namespace) -> int:
    _export(args.checkpoint, args.output, dev_data=args.dev_data, limit_dev=args.limit_dev)
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
    from rmserve.service.core.bundle import load_bundle

    if load_bundle(args.bundle, verify_hashes=False).manifest.steps is not None:
        return _cmd_eval_steps(args)
    if args.best_of or args.outcome_bundle:
        print("rmserve eval: --best-of and --outcome-bundle are for process reward model bundles", file=sys.stderr)
        return 2
    from rmserve.training.evaluate import format_summary, run_evaluation

    if args.train_log and not args.report:
        print("rmserve eval: --train-log is read only for --report", file=sys.stderr)
        return 2
    if args.report:  # find the training log before the slow part, so a wrong path fails at once
        from rmserve.service.core.bundle import load_bundle
        from rmserve.training.report import find_train_log, write_report

        log = find_train_log(load_bundle(args.bundle, verify_hashes=False).manifest.provenance, args.train_log)
    from rmserve.training.ratings import RatingOptions

    if args.bootstrap < 0:
        print("rmserve eval: --bootstrap must be 0 or more", file=sys.stderr)
        return 2
    metrics, scored = run_evaluation(args.bundle, args.data, args.limit, device=args.device,
                                     ratings=RatingOptions.from_config(args), resamples=args.bootstrap)
    if args.report:
        write_report(args.report, metrics, scored, log)
        print(f"report written to {args.report}", file=sys.stderr)
    print(json.dumps(metrics) if args.json else format_summary(metrics))
    return 0


def _cmd_eval_steps(args: argparse.Namespace) -> int:
    """`rmserve eval` on a process reward model bundle (training/evaluate_steps.py)."""
    from rmserve.training.evaluate_steps import format_step_summary, run_step_evaluation

    if not args.data:
        print("rmserve eval: a process reward model bundle needs --data: step-labelled chains", file=sys.stderr)
        return 2
    if args.report:
        from rmserve.service.core.bundle import load_bundle
        from rmserve.training.report import find_train_log
        from rmserve.training.report_steps import write_step_report

        log = find_train_log(load_bundle(args.bundle, verify_hashes=False).manifest.provenance, args.train_log)
    metrics, _ = run_step_evaluation(args.bundle, args.data, args.best_of, args.outcome_bundle, args.limit,
                                     device=args.device)
    if args.report:
        write_step_report(args.report, metrics, log)
        print(f"report written to {args.report}", file=sys.stderr)
    print(json.dumps(metrics) if args.json else format_step_summary(metrics))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rmserve.training.config import TrainConfig

    train = sub.add_parser("train", help="Train a reward model on preference data (Bradley–Terry and variants).",
                           description="Train a reward model on preference pairs, rankings, soft labels or margins "
                           "and save a checkpoint. For several processes, launch it with torchrun "
                           "(e.g. `torchrun --nproc_per_node 2 -m rmserve.cli train ...`).")

    add_dataclass_options(train, TrainConfig)
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
    export.add_argument("--limit-dev", type=at_least_one, default=None, help="Use only the first N rows of the dev data.")
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
    importer.add_argument("--limit-dev", type=at_least_one, default=None, help="Use only the first N preference rows.")
    importer.add_argument("--max-length", type=int, default=None,
                          help="Tokens per row, 8 to the model's positions (more is refused). Default: the model's "
                          "positions, at most 2048.")
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
    quantize.add_argument("--dev-data", default=None,
                          help="Pairs for the agreement check and the variant's normalization stats. Default: the "
                          "shipped dev split, for a bundle normalized on it (others must name theirs).")
    quantize.add_argument("--min-agreement", type=float, default=0.99,
                          help="Least share of dev pairs whose preferred response must stay the same (default 0.99).")
    quantize.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                          help="Where to run the agreement check. fp16 runs on CPU too (ONNX Runtime computes "
                          "what it has no fp16 kernel for in fp32); --device cuda checks it where it is served.")
    add_dataclass_options(quantize, TrainConfig, only=("ratings",))  # for a ratings --dev-data
    quantize.set_defaults(handler=_cmd_quantize)

    evaluate = sub.add_parser("eval", help="Measure a bundle's accuracy, calibration and length bias.",
                              description="Score preference pairs with the bundle's ONNX model, exactly as the "
                              "service does, and report tie-aware accuracy, log-loss, AUC, calibration error at the "
                              "bundle's temperature (and what that temperature was fitted on), accuracy by length, "
                              "reward-length correlation and the reward distribution, each accuracy, AUC, ECE and "
                              "log-loss with a 95 % bootstrap interval resampled by prompt; optionally an HTML "
                              "report with plots. A process reward model bundle is scored on step-labelled chains "
                              "instead: step AUC and accuracy, first-error localisation, shortcut baselines and "
                              "best-of-N selection, with 95 % intervals by problem.")
    evaluate.add_argument("--bundle", required=True, help="Bundle directory.")
    evaluate.add_argument("--data", default=None, help="Preference data (pairs, rankings or ratings; JSONL(.gz) or a "
                          "saved dataset directory). Default: the shipped HH-RLHF dev split. A process reward model bundle: "
                          "step-labelled chains (stepwise, Math-Shepherd or PRM800K rows), required.")
    evaluate.add_argument("--limit", type=at_least_one, default=None,
                          help="Use only the first N rows (a ranking row brings all its pairs).")
    evaluate.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="Execution provider.")
    evaluate.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                          help="Resamples of the prompts for the 95 %% interval of every accuracy, AUC, ECE and "
                          "log-loss figure (each prompt's pairs resampled together; fixed seed). 0: no intervals. "
                          "Default: 1000.")
    evaluate.add_argument("--json", action="store_true", help="Print the metrics as one JSON object (each figure "
                          "with an interval has it beside it as <figure>_ci95: [lo, hi]).")
    evaluate.add_argument("--report", metavar="HTML", default=None,
                          help="Also write a self-contained HTML report with plots to this file.")
    evaluate.add_argument("--train-log", default=None,
                          help="Training log (JSONL) for the report's curves. Default: train_log.jsonl in the "
                          "checkpoint named by the bundle's provenance.")
    evaluate.add_argument("--best-of", metavar="FILE", default=None,
                          help="Process reward models: candidate chains grouped by `problem` (e.g. the generator's "
                          "test-best-of-8.jsonl) for best-of-N selection accuracy against random choice.")
    evaluate.add_argument("--outcome-bundle", metavar="DIR", default=None,
                          help="Process reward models, with --best-of: an outcome reward model bundle to compare "
                          "selection with (candidates' steps joined by newlines, as the generator's pairs).")
    add_dataclass_options(evaluate, TrainConfig, only=("ratings",))  # for a ratings --data
    evaluate.set_defaults(handler=_cmd_eval)

