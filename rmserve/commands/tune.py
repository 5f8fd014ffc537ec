"""`rmserve tune`: choose training options by k-fold cross-validation on the training file, split by
prompt, so the dev split stays unread until the final report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from rmserve.commands.options import add_dataclass_options


def _cmd_tune(args: argparse.Namespace) -> int:
    from rmserve.training.config import TrainConfig
    from rmserve.training.tune import best, candidate_list, complete_folds, format_table, summarize, tune

    candidates = candidate_list(args.vary or [], args.candidate or [])
    base = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                          if hasattr(args, f.name)})
    records = tune(base, candidates, args.folds, args.fold_seed, args.work_dir, args.keep_checkpoints,
                   train_missing=not args.no_train)
    if args.no_train:
        records, left_out = complete_folds(records, candidates)
        if not records:
            print(f"rmserve tune: no fold of {args.work_dir} has a finished run of every candidate", file=sys.stderr)
            return 1
        if left_out:
            print(f"folds left out (not run for every candidate yet): {', '.join(map(str, left_out))}")
    summary = summarize(records)
    chosen = best(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"folds": args.folds, "fold_seed": args.fold_seed, "runs": records, "summary": summary,
                       "best": chosen["candidate"]}, f, indent=2)
    print(format_table(summary))
    print(f"highest mean accuracy over {len(summary[0]['folds'])} of {args.folds} folds: {chosen['candidate']} ({chosen['mean']:.4f}; "
          f"{chosen['difference']:+.4f} ± {chosen['difference_sd']:.4f} vs base, fold by fold)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    from rmserve.training.config import TrainConfig

    tune = sub.add_parser(
        "tune", help="Choose training options by k-fold cross-validation on the training file, split by prompt.",
        description="Deal the training file's prompts into --folds folds (no prompt in two folds), train every "
        "candidate recipe on all folds but one and score it on that one, for each fold; print each candidate's "
        "accuracy per fold, mean ± sd, and its fold-by-fold difference from the base recipe. The base recipe is "
        "the training options below; candidates change some of them (--vary, --candidate). The dev data is "
        "never read. Finished runs are kept in WORK_DIR/runs.jsonl: the same command again resumes.")
    tune.add_argument("--vary", action="append", metavar="OPTION=V1[,V2...]",
                      help="One candidate per value, each changing only this option of the base recipe "
                      "(one factor at a time), e.g. --vary learning_rate=1e-5,6e-5. Repeatable.")
    tune.add_argument("--candidate", action="append", metavar="'OPTION=V [OPTION=V...]'",
                      help="One candidate changing several options at once, e.g. "
                      "--candidate 'learning_rate=6e-5 epochs=2'. Repeatable.")
    tune.add_argument("--folds", type=int, default=5, help="Number of folds (default: 5).")
    tune.add_argument("--fold-seed", type=int, default=0, help="Seed of the prompts' deal into folds (default: 0).")
    tune.add_argument("--work-dir", default="artifacts/tune",
                      help="Fold files, runs.jsonl and (while a run trains) its checkpoint. Default: artifacts/tune.")
    tune.add_argument("--keep-checkpoints", action="store_true", help="Keep each run's checkpoint (about 90 MB each).")
    tune.add_argument("--json", metavar="FILE", default=None, help="Also write every run and the summary as JSON.")
    tune.add_argument("--no-train", action="store_true",
                      help="Train nothing: summarize the runs already in WORK_DIR, on the folds that have a run of "
                      "every candidate (e.g. while a long tune is still going, or after it was stopped).")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):  # the data options that make sense here, with train's help
        if f.name in ("base_model", "train_data", "limit_train", "skip_bad_rows"):
            flag, kind = "--" + f.name.replace("_", "-"), hints[f.name]
            if kind is bool:
                tune.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
            else:
                kind = next(a for a in typing.get_args(kind) if a is not type(None))  # "int | None" -> int
                tune.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"])
    add_dataclass_options(tune, TrainConfig, only=("ratings", "input", "optimisation", "loss", "performance"))
    tune.set_defaults(handler=_cmd_tune)
