"""`rmserve data`: work on training data without a model (convert, inspect, generate-steps, convert-steps)."""

from __future__ import annotations

import argparse
import json
import sys

from rmserve.commands.options import add_dataclass_options


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


def _cmd_data_generate_steps(args: argparse.Namespace) -> int:
    from rmserve.training.prm_generator import GeneratorConfig, parse_error_kinds
    from rmserve.training.prm_splits import write_splits

    config = GeneratorConfig(min_steps=args.min_steps, max_steps=args.max_steps, max_value=args.max_value,
                             max_operand=args.max_operand, error_decay=args.error_decay,
                             error_kinds=parse_error_kinds(args.error_kinds))
    manifest = write_splits(args.output, {"train": args.train, "dev": args.dev, "test": args.test},
                            seed=args.seed, best_of=args.best_of, config=config)
    for name, counts in manifest["files"].items():
        print(f"{args.output}/{name}: " + ", ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float)
                                                   else f"{k} {v}" for k, v in counts.items()))
    for split, aucs in manifest["shortcut_baselines"].items():
        print(f"shortcut step AUC on {split}: " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items() if v is not None))
    return 0


def _cmd_data_convert_steps(args: argparse.Namespace) -> int:
    from rmserve.training.steps import StepOptions, load_steps, step_counts, write_steps

    options = StepOptions(step_tag=args.step_tag, neutral=args.prm800k_neutral,
                          prm800k_alternatives=args.prm800k_alternatives)
    loaded = load_steps(args.input, skip_bad_rows=args.skip_bad_rows, options=options)
    for bad in loaded.skipped:
        print(f"skipped bad row: {bad}", file=sys.stderr)
    write_steps(loaded.chains, args.output, source=loaded.path)
    print(f"wrote {args.output}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in step_counts(loaded).items()))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rmserve.training.config import TrainConfig

    data = sub.add_parser("data", help="Convert, inspect or generate training data (preferences and step labels).",
                          description="Work on training data without a model: `convert` writes ratings or "
                          "rankings as pairs JSONL; `inspect` reports what a reward model could learn from it; "
                          "`generate-steps` writes step-labelled arithmetic problems for a process reward model; "
                          "`convert-steps` reads step-labelled data in any accepted format (docs/prm.md).")
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

    add_dataclass_options(convert, TrainConfig, only=("ratings",))
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
    add_dataclass_options(inspect, TrainConfig, only=("ratings",))
    inspect.set_defaults(handler=_cmd_data_inspect)

    generate = data_sub.add_parser(
        "generate-steps", help="Write generated step-labelled arithmetic problems (train, dev, test, best-of-N).",
        description="Write multi-step arithmetic word problems with step-labelled solution chains to DIR: "
        "train/dev/test.jsonl (TRL stepwise rows, per problem one right chain and one with an injected error, "
        "every step from the error on labelled bad), test-best-of-N.jsonl (N candidate chains per test problem), "
        "train/dev-pairs.jsonl (outcome preference pairs of the same problems) and manifest.json. Splits never "
        "share a problem. Prints the counts and the shortcut baselines' step AUC (step length, position, a "
        "digit the prompt lacks). Formats and settings: docs/prm.md.")
    generate.add_argument("--output", required=True, metavar="DIR", help="Directory to write the files to.")
    generate.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    generate.add_argument("--train", type=int, default=2000, help="Training problems (default: 2000).")
    generate.add_argument("--dev", type=int, default=200, help="Dev problems (default: 200).")
    generate.add_argument("--test", type=int, default=500, help="Test problems (default: 500).")
    generate.add_argument("--best-of", type=int, default=8, metavar="N",
                          help="Candidate chains per test problem in test-best-of-N.jsonl; 0 writes none (default: 8).")
    from rmserve.training.prm_generator import GeneratorConfig

    defaults = GeneratorConfig()
    generate.add_argument("--min-steps", type=int, default=defaults.min_steps,
                          help=f"Fewest steps in a problem (default: {defaults.min_steps}).")
    generate.add_argument("--max-steps", type=int, default=defaults.max_steps,
                          help=f"Most steps in a problem (default: {defaults.max_steps}).")
    generate.add_argument("--max-value", type=int, default=defaults.max_value,
                          help=f"Largest value any chain may reach (default: {defaults.max_value}).")
    generate.add_argument("--max-operand", type=int, default=defaults.max_operand,
                          help=f"Largest number added or subtracted (default: {defaults.max_operand}).")
    generate.add_argument("--error-decay", type=float, default=defaults.error_decay,
                          help="Where errors fall: P(first error at step k) is proportional to DECAY**k; 1 spreads "
                          "them evenly, which makes step position a stronger shortcut (default: "
                          f"{defaults.error_decay}).")
    generate.add_argument("--error-kinds", default=",".join(f"{k}={w}" for k, w in defaults.error_kinds),
                          help="Weights of the injected error kinds: operation (the wrong operation for the step's "
                          "verb), arithmetic (a wrong result), copy (a wrong number carried from the step before) "
                          "(default: %(default)s).")
    generate.set_defaults(handler=_cmd_data_generate_steps)

    convert_steps = data_sub.add_parser(
        "convert-steps", help="Write step-labelled data (stepwise, Math-Shepherd, PRM800K) as stepwise JSONL.",
        description="Read IN in any accepted step format (TRL stepwise rows, Math-Shepherd tagged rows, PRM800K "
        "labelled solutions; the first row decides) and write each chain as one {prompt, completions, labels, "
        "source} line of OUT (.gz to compress), then print the counts. Formats: docs/prm.md.")
    convert_steps.add_argument("input", metavar="IN", help="JSONL(.gz) data file or save_to_disk directory.")
    convert_steps.add_argument("output", metavar="OUT", help="Stepwise JSONL file to write (.jsonl or .jsonl.gz).")
    convert_steps.add_argument("--skip-bad-rows", action="store_true",
                               help="Leave out rows that fail validation (each reported) instead of stopping at the first.")
    convert_steps.add_argument("--step-tag", default="ки",
                               help="Math-Shepherd: the tag that ends each step in `input` (default: %(default)s).")
    convert_steps.add_argument("--prm800k-neutral", choices=["good", "bad"], default="good",
                               help="PRM800K: what a step rated 0 (neutral) becomes (default: good; TRL's conversion uses bad).")
    convert_steps.add_argument("--prm800k-alternatives", action=argparse.BooleanOptionalAction, default=True,
                               help="PRM800K: also make a chain of every rated candidate step that was not continued.")
    convert_steps.set_defaults(handler=_cmd_data_convert_steps)
