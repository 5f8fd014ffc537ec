"""The `rmserve` command: train, export, import, quantize, eval, serve, data, tune. With its subcommand modules
(rmserve/commands/), the one place above both halves: it dispatches to the server (`rmserve.service`) and
to training (`rmserve.training`).

Every subcommand imports what it needs only when it runs, so each install shape keeps a working command:
the base (client) install answers --help and names the extra a subcommand needs, a `serve` install runs
`rmserve serve`, `eval` and `quantize`, and the `train` extra adds training.
"""

from __future__ import annotations

import argparse
import sys

from rmserve.commands import data, models, serve, tune

EXTRA_FOR = {"serve": "serve", "eval": "serve", "quantize": "train", "train": "train", "export": "train",
             "data": "train", "import": "train", "tune": "train"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmserve", description="Train, export and serve reward models for RLHF.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_commands(sub)
    serve.add_commands(sub)
    data.add_commands(sub)
    tune.add_commands(sub)
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
