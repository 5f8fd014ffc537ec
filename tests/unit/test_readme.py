"""The README cannot lie: its test command is what CI runs, and it documents every setting."""

from pathlib import Path

from rmserve.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    assert "\nmake test\n" in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def test_every_setting_is_documented():
    for name in Settings.model_fields:
        assert f"RMSERVE_{name.upper()}" in README, name
        assert f"--{name.replace('_', '-')}" in README, name
