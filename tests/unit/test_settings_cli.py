import asyncio
import subprocess
import sys

import pytest
from pydantic import ValidationError

from rmserve.cli import main
from rmserve.service.settings import Settings


def test_settings_read_rmserve_env(monkeypatch):
    monkeypatch.setenv("RMSERVE_PORT", "9123")
    monkeypatch.setenv("RMSERVE_DEVICE", "cpu")
    settings = Settings()
    assert settings.port == 9123 and settings.device == "cpu"


def test_bad_setting_names_the_field(monkeypatch):
    monkeypatch.setenv("RMSERVE_DEVICE", "tpu")
    with pytest.raises(ValidationError, match="device"):
        Settings()


def test_serve_with_bad_setting_exits_2_naming_it(capsys):
    assert main(["serve", "--port", "99999"]) == 2
    assert "setting 'port'" in capsys.readouterr().err


def test_serve_with_missing_bundle_exits_2_with_the_bundle_error(tmp_path, capsys):
    assert main(["serve", "--bundle", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "export", "quantize", "eval", "serve"])
def test_every_subcommand_has_help(command):
    out = subprocess.run([sys.executable, "-m", "rmserve.cli", command, "--help"], capture_output=True, text=True, check=True)
    assert "usage: rmserve " + command in out.stdout
    assert "--" in out.stdout


def test_missing_api_keys_file_stops_start_up_naming_it(tiny_bundle, tmp_path, capsys):
    code = main(["serve", "--bundle", str(tiny_bundle), "--api-keys-file", str(tmp_path / "keys.txt"),
                 "--port", "0", "--grpc-port", "-1"])
    assert code == 2
    assert "api_keys_file" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3"])
def test_a_public_address_without_keys_is_refused_naming_the_flag(tiny_bundle, host, capsys):
    assert main(["serve", "--bundle", str(tiny_bundle), "--host", host, "--port", "0", "--grpc-port", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--allow-unauthenticated" in err and "RMSERVE_ALLOW_UNAUTHENTICATED" in err and host in err
    assert "Traceback" not in err


def test_booleans_are_switches_that_also_take_a_value():
    from rmserve.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--allow-unauthenticated"]).allow_unauthenticated == "true"
    assert parser.parse_args(["serve", "--allow-unauthenticated", "false"]).allow_unauthenticated == "false"
    assert parser.parse_args(["serve"]).allow_unauthenticated is None  # the environment's, or the default


@pytest.mark.parametrize("given, expected", [({}, (1024, 0.02, 0.06)),
                                             ({"max_padding_ratio": 0.3, "max_batch_tokens": 500}, (500, 0.3, 0.9)),
                                             ({"max_padding_ratio": 0.5}, (1024, 0.5, 1.0))])
def test_batching_defaults_by_provider(tiny_bundle, given, expected):
    from rmserve.service.core.metrics import Metrics
    from rmserve.service.core.scoring import Scorer, provider_batching

    assert provider_batching("CUDAExecutionProvider") == (4096, 0.2)
    scorer = Scorer.load(Settings(bundle=tiny_bundle, device="cpu", **given), Metrics())
    try:
        assert scorer.engine.provider == "CPUExecutionProvider"
        policy = scorer.batcher.policy
        assert (policy.max_batch_tokens, policy.max_padding_ratio, policy.padding_allowed(2)) == pytest.approx(expected)
        assert policy.padding_allowed(1) == policy.padding_allowed(3) == policy.max_padding_ratio
    finally:
        scorer.close()


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, 2), (16, 4)])
def test_tokenizer_threads_leave_a_core_to_the_event_loop(monkeypatch, cores, expected):
    from rmserve.service.core import scoring

    monkeypatch.setattr(scoring.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert scoring.tokenizer_threads() == expected
    assert scoring.tokenizer_threads(configured=3) == 3  # --tokenizer-threads wins over the core count


def test_tokenizer_threads_setting_reaches_the_scorer(tiny_bundle):
    from rmserve.service.core.metrics import Metrics
    from rmserve.service.core.scoring import Scorer

    scorer = Scorer.load(Settings(bundle=tiny_bundle, device="cpu", tokenizer_threads=3), Metrics())
    try:
        assert scorer.tokenizing.threads == 3
    finally:
        scorer.close()


@pytest.mark.parametrize("choice, expected", [(None, "uvloop"), ("auto", "uvloop"), ("uvloop", "uvloop"),
                                              ("asyncio", "asyncio")])
def test_serve_runs_on_the_chosen_event_loop(tiny_bundle, monkeypatch, choice, expected):
    pytest.importorskip("uvloop")
    seen = []

    async def serve(settings):  # stands in for the server: reports the loop it runs on
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])
        return 0

    monkeypatch.setattr("rmserve.service.process.runtime.serve", serve)
    flags = [] if choice is None else ["--event-loop", choice]
    assert main(["serve", "--bundle", str(tiny_bundle), *flags]) == 0
    assert seen == [expected]


def test_without_uvloop_auto_falls_back_to_asyncio_and_uvloop_is_refused(tiny_bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: importing it raises ImportError
    seen = []

    async def serve(settings):
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])
        return 0

    monkeypatch.setattr("rmserve.service.process.runtime.serve", serve)
    assert main(["serve", "--bundle", str(tiny_bundle)]) == 0
    assert seen == ["asyncio"]
    assert main(["serve", "--bundle", str(tiny_bundle), "--event-loop", "uvloop"]) == 2
    assert "uvloop is not installed" in capsys.readouterr().err and seen == ["asyncio"]


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--bundle", "b", "--limit", "0"], "--limit"),  # read as "no rows": "holds no preference rows"
    (["export", "--checkpoint", "c", "--output", "o", "--limit-dev", "-1"], "--limit-dev"),
    (["import", "src", "--output", "o", "--limit-dev", "0"], "--limit-dev"),
])
def test_row_limits_below_one_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert f"argument {flag}: must be at least 1" in capsys.readouterr().err


def _never_serve(monkeypatch) -> list:
    """Stand in for the server, so that a start the test expects to be refused cannot block it."""
    started: list = []

    async def serve(settings):
        started.append(settings)
        return 0

    monkeypatch.setattr("rmserve.service.process.runtime.serve", serve)
    return started


@pytest.mark.parametrize("flags, named", [
    (["--tls-cert-file", "{missing}", "--tls-key-file", "{missing}"], "setting 'tls_cert_file'"),
    (["--tls-cert-file", "{directory}", "--tls-key-file", "{directory}"], "setting 'tls_cert_file'"),
    (["--tls-key-file", "{file}"], "tls_cert_file and tls_key_file"),
    (["--verifiers-config", "{missing}"], "setting 'verifiers_config'"),
    (["--request-timeout-seconds", "400"], "request_timeout_seconds (400) is longer than max_request_timeout_seconds"),
    (["--port", "18000", "--grpc-port", "18000"], "grpc_port"),
])
def test_settings_checked_together_or_on_disk_are_named(tiny_bundle, tmp_path, monkeypatch, capsys, flags, named):
    started = _never_serve(monkeypatch)
    (tmp_path / "file").write_text("x")
    paths = {"missing": tmp_path / "missing", "directory": tmp_path, "file": tmp_path / "file"}
    flags = [flag.format(**paths) for flag in flags]
    assert main(["serve", "--bundle", str(tiny_bundle), *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "setting ''" not in err and "Value error" not in err, err
    assert not started


@pytest.mark.parametrize("setting", ["api_keys_file", "admin_api_keys_file"])
def test_a_key_file_that_holds_no_key_stops_start_up(tiny_bundle, tmp_path, monkeypatch, capsys, setting):
    """A key file given but empty (a Secret mounted before it was filled) would serve with authentication
    off on loopback: refused, naming the setting and the file."""
    started = _never_serve(monkeypatch)
    keys = tmp_path / "keys"
    keys.write_text("# the operators' keys go here\n\n")
    assert main(["serve", "--bundle", str(tiny_bundle), "--" + setting.replace("_", "-"), str(keys)]) == 2
    err = capsys.readouterr().err
    assert setting in err and str(keys) in err and "no key" in err, err
    assert not started


def test_environment_variables_that_name_no_setting_are_reported(tiny_bundle, monkeypatch, caplog):
    """pydantic-settings ignores them: a misspelt RMSERVE_API_KEY (the setting is api_keys) would start a
    server without authentication and say nothing."""
    from rmserve.service.settings import unknown_environment

    environ = {"RMSERVE_API_KEY": "secret", "RMSERVE_API_KEYS": "k", "RMSERVE_TEST_CUDA": "1", "HOME": "/"}
    assert unknown_environment(environ) == ["RMSERVE_API_KEY"]
    started = _never_serve(monkeypatch)
    monkeypatch.setenv("RMSERVE_API_KEY", "secret")
    monkeypatch.setenv("RMSERVE_MAX_BATCH_SIZE", "8")
    with caplog.at_level("WARNING", logger="rmserve"):
        assert main(["serve", "--bundle", str(tiny_bundle)]) == 0
    assert started and "name no setting: RMSERVE_API_KEY" in caplog.text and "MAX_BATCH_SIZE" not in caplog.text
