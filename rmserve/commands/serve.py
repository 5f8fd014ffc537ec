"""`rmserve serve`: the settings as flags, validated at start-up, then the serving process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from rmserve.commands.options import add_settings_options


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from rmserve.service.core.bundle import BundleError, load_bundle
    from rmserve.service.core.verification import load_verifiers
    from rmserve.service.process.reload import loads_or_closes_under_way
    from rmserve.service.process.runtime import preflight, serve
    from rmserve.service.settings import Settings, unknown_environment
    from rmserve.service.transports.tls import ListenError

    given: dict[str, Any] = {
        name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None
    }
    try:
        settings = Settings(**given)
    except ValidationError as e:
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        where = f"setting '{'.'.join(map(str, first['loc']))}': " if first["loc"] else ""  # else: it names them
        print(f"rmserve serve: {where}{message}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if unknown := unknown_environment(os.environ):
        logging.getLogger("rmserve").warning("ignoring environment variables that name no setting: %s "
                                             "(the settings: rmserve serve --help)", ", ".join(unknown))
    try:  # keys readable; no open port on a public address by accident
        preflight(settings)
    except ValueError as e:
        print(f"rmserve serve: {e}", file=sys.stderr)
        return 2
    try:  # fail fast, with the bundle's own message, before binding ports
        load_bundle(settings.bundle)
    except BundleError as e:
        print(f"rmserve serve: bundle {settings.bundle}: {e}", file=sys.stderr)
        return 2
    load_verifiers(settings.verifiers_config)  # and with the verifier configuration's
    run = asyncio.run
    if settings.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if settings.event_loop == "uvloop":
                print("rmserve serve: setting 'event_loop': uvloop is not installed (pip install uvloop)", file=sys.stderr)
                return 2
        else:
            run = uvloop.run
    try:
        code = run(serve(settings))
    except ListenError as e:
        print(f"rmserve serve: {e}", file=sys.stderr)
        return 2
    if loads_or_closes_under_way():  # a hung engine, or a large bundle still loading, at the end of the grace period
        # The interpreter's exit would tear itself down under ONNX Runtime's running code (an abort).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def add_commands(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="Serve a bundle over HTTP.",
                           description="Serve POST /score and /compare (plus /healthz, /readyz, /metrics, "
                           "/v1/model). Each option can also be set by its RMSERVE_* environment variable.")
    add_settings_options(serve)
    serve.set_defaults(handler=_cmd_serve)

