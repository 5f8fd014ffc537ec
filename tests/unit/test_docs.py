"""The documentation cannot lie: what README.md and docs/ show still works in this checkout.

- every `rmserve ...` command in a fenced block parses with the real `rmserve` parser (the subcommand
  exists, every flag is one of its options, required options are there, values fit their types), and
  every `rmserve ...` in running text names a real subcommand and real flags;
- every `make TARGET` is a target of the Makefile, and every script run as `python X.py` / `bash X.sh`
  exists;
- every `from rmserve... import ...` in a Python block imports, and every `rmserve.a.b` named in the
  text resolves to a module or one of its attributes;
- every relative link points to a file that exists, and every `#anchor` to a heading of its page;
- every file path named in the text exists;
- the README keeps the test command CI runs, the configuration page lists every setting with its real
  default, and the data-format examples load as the page says.

The pages are read as text; nothing here starts a server. Commands are checked by parsing, not running.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rmserve.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FOLDER_READMES = [ROOT / "deploy" / "README.md", ROOT / "proto" / "README.md"]
ALL_DOCS = PAGES + FOLDER_READMES
# docs/benchmarks.md records past runs as they were run: its running text keeps the names of its day.
# Its fenced blocks and links are checked like every page's.
CURRENT_TEXT = [p for p in ALL_DOCS if p.name != "benchmarks.md"]

# docs/accuracy.md is written on another branch (issue 21, the default bundle's measured accuracy); the
# README and docs/training.md link to it ahead of its arrival. Exactly that one link may dangle until it
# lands; once it exists it is checked like any other.
LANDING_ELSEWHERE = {ROOT / "docs" / "accuracy.md"}

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
SHELL_LANGS = {"", "sh", "bash", "shell", "console"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")  # FILE, DIR, N, COMMAND: a value the reader supplies


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- reading markdown ---------------------------------------------------------------------------------

def split_page(text: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """The fenced blocks (language, lines without the fence's indentation) and the lines outside any fence."""
    blocks: list[tuple[str, list[str]]] = []
    prose: list[str] = []
    current: list[str] | None = None
    lang, indent = "", 0
    for line in text.splitlines():
        fence = FENCE.match(line)
        if fence and current is None:
            current, lang, indent = [], fence.group(2), len(fence.group(1))
        elif fence:
            blocks.append((lang, current))
            current = None
        elif current is not None:
            current.append(line[indent:].rstrip() if line[:indent].isspace() else line.rstrip())
        else:
            prose.append(line)
    assert current is None, "a fenced block is never closed"
    return blocks, prose


def inline_spans(prose: list[str]) -> list[str]:
    """Code spans of the running text (single backticks; a span may not cross lines here)."""
    return [span for line in prose for span in re.findall(r"`([^`\n]+)`", line)]


def shell_commands(lines: list[str]) -> list[str]:
    """The commands of a shell block: its `$ ` lines when it shows a transcript, else every line that
    starts at the block's margin (an indented line is a diagram or a continuation); a trailing backslash
    continues a command on the next line."""
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
    if any(line.startswith("$ ") for line in joined):
        return [line[2:] for line in joined if line.startswith("$ ")]
    return [line for line in joined if line and not line[0].isspace() and not line.startswith("#")]


def words(command: str) -> list[str]:
    """The words of a command, without a trailing comment or `&`, or leading environment assignments. A code span
    of running text need not be a command (`"\\n\\nAssistant:"`): one that is no shell line has none."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        return []
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens.pop(0)
    if tokens and tokens[-1] == "&":  # started in the background
        tokens.pop()
    return tokens


def rmserve_args(tokens: list[str]) -> list[str] | None:
    """The arguments given to rmserve, however it is launched (`rmserve`, `python -m rmserve`,
    `torchrun ... -m rmserve.cli`); None when the command is not rmserve."""
    if not tokens:
        return None
    if Path(tokens[0]).name == "rmserve":
        return tokens[1:]
    if "-m" in tokens[:-1] and Path(tokens[0]).name in ("python", "python3", "torchrun"):
        at = tokens.index("-m")
        if tokens[at + 1] in ("rmserve", "rmserve.cli"):
            return tokens[at + 2:]
    return None


# --- what the pages say -------------------------------------------------------------------------------

def page_blocks():
    for page in ALL_DOCS:
        blocks, _ = split_page(page.read_text())
        for lang, lines in blocks:
            yield page, lang, lines


def fenced_commands() -> list[tuple[str, str]]:
    return [(rel(page), command) for page, lang, lines in page_blocks() if lang in SHELL_LANGS
            for command in shell_commands(lines)]


def prose_spans() -> list[tuple[str, str]]:
    return [(rel(page), span) for page in CURRENT_TEXT for span in inline_spans(split_page(page.read_text())[1])]


FENCED = fenced_commands()
SPANS = prose_spans()
FENCED_RMSERVE = [(page, cmd) for page, cmd in FENCED if rmserve_args(words(cmd)) is not None]
SPAN_RMSERVE = [(page, span) for page, span in SPANS if rmserve_args(words(span)) is not None]


# --- the rmserve parser -------------------------------------------------------------------------------

def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def resolve(args: list[str]) -> tuple[list[argparse.ArgumentParser], list[str]]:
    """The parsers a command reaches (several when it names `COMMAND`, a placeholder for any) and the
    words after its subcommands."""
    parsers = [build_parser()]
    rest = list(args)
    while rest and not rest[0].startswith("-"):
        choices = subparsers_of(parsers[0])
        if not choices:
            break
        word = rest.pop(0)
        if PLACEHOLDER.match(word):
            parsers = list(choices.values())
            continue
        if word not in choices:
            raise AssertionError(f"no subcommand {word!r} (there are {sorted(choices)})")
        parsers = [choices[word]]
    return parsers, rest


def check_flags(args: list[str]) -> None:
    parsers, rest = resolve(args)
    for word in rest:
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            for parser in parsers:
                if flag not in parser._option_string_actions:
                    raise AssertionError(f"{parser.prog} has no option {flag}")


def with_example_values(parser: argparse.ArgumentParser, args: list[str]) -> list[str]:
    """`--max-length N` → `--max-length 1`: a placeholder after a typed option becomes a value of its type."""
    out = list(args)
    for i, word in enumerate(out[:-1]):
        action = parser._option_string_actions.get(word)
        if action is not None and action.type in (int, float) and PLACEHOLDER.match(out[i + 1]):
            out[i + 1] = "1"
    return out


@pytest.mark.parametrize(("page", "command"), FENCED_RMSERVE, ids=[f"{p}: {c[:50]}" for p, c in FENCED_RMSERVE])
def test_every_rmserve_command_in_a_block_parses(page, command, capsys):
    args = rmserve_args(words(command))
    check_flags(args)
    if "--help" in args or "-h" in args:
        return
    parsers, _ = resolve(args)
    try:
        build_parser().parse_args(with_example_values(parsers[0], args))
    except SystemExit as e:  # argparse's way of refusing a command line; its message went to stderr
        pytest.fail(f"{page}: `{command}` does not parse: {capsys.readouterr().err.strip()} (exit {e.code})")


@pytest.mark.parametrize(("page", "span"), SPAN_RMSERVE, ids=[f"{p}: {c[:50]}" for p, c in SPAN_RMSERVE])
def test_every_rmserve_command_in_the_text_names_real_options(page, span):
    check_flags(rmserve_args(words(span)))


def every_rmserve_option() -> set[str]:
    found: set[str] = set()
    todo = [build_parser()]
    while todo:
        parser = todo.pop()
        found.update(parser._option_string_actions)
        todo += subparsers_of(parser).values()
    return found


# Flags of other programs that the text names; those of this repository's scripts are checked against them.
OTHER_PROGRAMS_FLAGS = {
    "--build-arg": None,            # docker build
    "--remote_rm_url": None,        # OpenRLHF's trainers
    "--duration": "bench/soak.py",
    "--warmup": "bench/soak.py",
    "--no-write": "bench/soak.py",
}


BENCH_SCRIPTS = {path.name: path.read_text() for path in (ROOT / "bench").glob("*.py")}


def test_every_flag_named_in_the_text_is_an_option():
    """`--rating-ties drop` in a sentence is an rmserve option too, and must stay one."""
    options = every_rmserve_option()
    named = [(page, span.split()[0].split("=")[0]) for page, span in SPANS if span.startswith("--")]
    assert len(named) >= 40
    for page, flag in named:
        if "<" in flag:
            continue  # `--<name>`: the pattern, not a flag
        if flag.endswith("*"):
            assert any(o.startswith(flag[:-1]) for o in options), f"{page}: no option matches {flag}"
        elif flag in OTHER_PROGRAMS_FLAGS:
            script = OTHER_PROGRAMS_FLAGS[flag]
            assert script is None or f'"{flag}"' in (ROOT / script).read_text(), f"{page}: {script} has no {flag}"
        elif flag not in options and not any(f'"{flag}"' in text for text in BENCH_SCRIPTS.values()):
            raise AssertionError(f"{page}: `{flag}` is no option of any rmserve subcommand or bench/ script")


def test_the_pages_do_show_commands():
    """The extraction above finds what it should: a parser that found nothing would pass everything."""
    assert len(FENCED_RMSERVE) >= 10 and len(SPAN_RMSERVE) >= 20
    assert any("torchrun" in cmd for _, cmd in FENCED_RMSERVE)
    assert any(span.startswith("rmserve data inspect") for _, span in SPAN_RMSERVE)


def test_a_renamed_flag_or_subcommand_fails_the_checks():
    check_flags(["train", "--train-data", "x", "--export-to", "y"])
    check_flags(["COMMAND", "--help"])
    with pytest.raises(AssertionError, match="no option --train-file"):
        check_flags(["train", "--train-file", "x"])
    with pytest.raises(AssertionError, match="no subcommand 'inspect'"):
        check_flags(["inspect", "FILE"])
    assert rmserve_args(words("RMSERVE_PORT=1 python -m rmserve serve  # a comment")) == ["serve"]
    assert rmserve_args(words("torchrun --standalone -m rmserve.cli train --seed 1")) == ["train", "--seed", "1"]
    assert rmserve_args(words("curl -s 127.0.0.1:8000/score")) is None


# --- make targets and scripts ---------------------------------------------------------------------------

def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {name for line in text.splitlines()
            if (m := re.match(r"^([\w.-]+)\s*:(?!=)", line)) for name in [m.group(1)]}


def test_every_make_target_named_exists():
    targets = makefile_targets()
    assert {"serve", "test"} <= targets
    named = [(page, w) for page, text in FENCED + SPANS if (ws := words(text)) and ws[0] == "make"
             for w in ws[1:] if not w.startswith("-") and "=" not in w]
    assert named, "no `make` command found in the docs"
    for page, target in named:
        assert target in targets, f"{page}: `make {target}` is not a target of the Makefile"


def test_every_script_run_exists():
    run = [(page, ws[1]) for page, text in FENCED + SPANS if len(ws := words(text)) > 1
           and Path(ws[0]).name in ("python", "python3", "bash") and re.search(r"\.(py|sh)$", ws[1])]
    assert len(run) >= 5
    for page, script in run:
        assert (ROOT / script).is_file(), f"{page}: {script} does not exist"


# --- Python: imports and dotted names ---------------------------------------------------------------------

def python_import_lines() -> list[tuple[str, str]]:
    found = []
    for page, lang, lines in page_blocks():
        if lang == "python":
            found += [(rel(page), line) for line in lines
                      if re.match(r"^(from rmserve[\w.]* import |import rmserve)", line.strip())]
    return found


# `rmserve.v1.*` names the protobuf package of the gRPC contract (proto/rmserve/v1/reward.proto), not Python.
DOTTED = re.compile(r"(?<![\w/.-])rmserve(?:\.\w+)+")  # not inside a path (`dashboards/rmserve.json`)


def dotted_names() -> list[tuple[str, str]]:
    return [(page, name) for page, span in SPANS for name in DOTTED.findall(span)
            if not name.startswith("rmserve.v1.")]


RESOLVE = r"""
import importlib, json, sys
failed = []
for kind, text in json.loads(sys.argv[1]):
    try:
        if kind == "import":
            exec(text, {})
        else:
            parts = text.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError:
                    continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
    except Exception as e:
        failed.append([text, f"{type(e).__name__}: {e}"])
print(json.dumps(failed))
"""


def test_every_python_import_and_module_name_in_the_docs_resolves():
    imports, names = python_import_lines(), dotted_names()
    assert len(imports) >= 4 and len(names) >= 10
    where = {}
    for page, text in imports:
        where.setdefault(text, page)
    for page, text in names:
        where.setdefault(text, page)
    todo = [["import", t] for _, t in imports] + [["name", t] for _, t in names]
    done = subprocess.run([sys.executable, "-c", RESOLVE, json.dumps(todo)], capture_output=True, text=True,
                          check=True, cwd="/")  # outside the checkout: imports come from the install
    failed = json.loads(done.stdout)
    assert not failed, "\n".join(f"{where[text]}: {text}: {error}" for text, error in failed)


# --- links, anchors and paths ----------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in split_page(page.read_text())[1]:
        if m := re.match(r"^#{1,6}\s+(.*)$", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            found.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return found


def links() -> list[tuple[Path, str]]:
    return [(page, target) for page in ALL_DOCS for line in split_page(page.read_text())[1]
            for target in re.findall(r"\]\(([^)\s]+)\)", line)]


def test_every_relative_link_points_to_a_file_that_exists():
    checked = 0
    for page, target in links():
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if path in LANDING_ELSEWHERE and not path.exists():
            continue
        assert path.exists(), f"{rel(page)}: link to {target}: {path_part} does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{rel(page)}: link to {target}: no heading #{anchor} in {rel(path)}"
        checked += 1
    assert checked >= 30


# Folders a page may name a file relative to, besides its own and the repository root: the layout page
# names modules inside the server's units (`core/bundle.py`, `transports/http/`).
PATH_BASES = [ROOT, ROOT / "service", ROOT / "service" / "transports"]
# Named in the text but not meant to exist in the checkout: build outputs and files the reader makes.
NOT_IN_THE_CHECKOUT = (
    "artifacts/",                 # the default bundle and checkpoint, built by `make serve`
    "k8s/bundle-volume.yaml",     # deploy/README.md: a kustomize patch the operator writes
    "deploy/api-keys",            # deploy/README.md: the git-ignored keys file the operator writes
    "vllm/",                      # docs/vllm.md: files of vLLM's release, whose protocol it follows
    ".device/",                   # what scripts/pack-device.sh packs for a lent GPU machine (git-ignored)
)
PATH_SPAN = re.compile(r"^\.{0,2}/?[\w.-]+(?:/[\w.*-]+)*/?$")


TOP_LEVEL = {path.name for path in ROOT.iterdir()}


def test_every_file_path_named_in_the_text_exists():
    checked = 0
    for page, span in SPANS:
        if "/" not in span or not PATH_SPAN.match(span) or span.startswith("/") or "*" in span:
            continue  # not a path, or a URL path (`/v1/model`), or a pattern
        if any(PLACEHOLDER.match(part) for part in span.split("/")) or span.startswith(NOT_IN_THE_CHECKOUT):
            continue  # OUTPUT_DIR/train_log.jsonl: a path the reader chooses
        if not re.search(r"\.\w+$|/$", span) and "." in span:
            continue  # a dotted name with a slash is no path
        if not re.search(r"\.\w+$|/$", span) and span.split("/")[0] not in TOP_LEVEL and not span.startswith("."):
            continue  # `3/4`, `org/dataset`: no file extension and no folder of the repository
        page_dir = (ROOT / page).parent
        candidates = [page_dir / span, *(base / span for base in PATH_BASES)]
        assert any(c.exists() for c in candidates), f"{page}: `{span}` names no file of the repository"
        checked += 1
    assert checked >= 30


# --- what CI and the settings rely on --------------------------------------------------------------------

def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test$", readme, re.M), "README.md must give `make test` alone on a line"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "grep -q '^make test$' README.md" in ci and "\nmake test\n" in ci


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_bytes()) < 12_500, "the README is for newcomers: move detail to docs/"


def config_table() -> dict[str, tuple[str, str]]:
    """flag → (environment variable, default cell) from docs/configuration.md's table."""
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    return rows


def test_every_setting_is_documented_with_its_real_default():
    from rmserve.service.core.engine import CPU, CUDA
    from rmserve.service.core.scoring import provider_batching
    from rmserve.service.settings import Settings

    table = config_table()
    assert set(table) == {"--" + name.replace("_", "-") for name in Settings.model_fields}
    for name, field in Settings.model_fields.items():
        env, default = table["--" + name.replace("_", "-")]
        assert env == f"RMSERVE_{name.upper()}", name
        value = field.default
        if name in ("max_padding_ratio", "max_batch_tokens"):  # None in the settings: chosen by the provider
            assert default == (f"by provider: `{getattr(provider_batching(CPU), name)}` CPU, "
                               f"`{getattr(provider_batching(CUDA), name)}` CUDA"), default
            continue
        value = getattr(value, "get_secret_value", lambda v=value: v)()
        expected = str(value).lower() if isinstance(value, bool) else str(value)
        assert default == f"`{expected}`", f"--{name.replace('_', '-')}: documented {default}, really {expected!r}"


# --- examples that are data ------------------------------------------------------------------------------

def json_blocks(page: Path) -> list[list[str]]:
    return [lines for lang, lines in split_page(page.read_text())[0] if lang == "json"]


def test_the_data_format_examples_load(tmp_path):
    pytest.importorskip("rmserve.training.data")
    from rmserve.training.data import load_preferences

    pairs, ratings = json_blocks(ROOT / "docs" / "training.md")[:2]
    path = tmp_path / "formats.jsonl"
    path.write_text("\n".join(pairs) + "\n")
    loaded = load_preferences(path)
    assert len(loaded.groups) == len(pairs) == 7
    assert len(loaded.pairs) == 5 + 3 + 3 and sorted({p.label for p in loaded.pairs}) == [0.5, 0.8, 1.0]
    assert all('"rating"' in line for line in ratings)


def test_the_data_convert_transcript_is_what_the_command_prints(tmp_path):
    """docs/training.md shows `rmserve data convert` on its own ratings example: run it on that example."""
    text = (ROOT / "docs" / "training.md").read_text()
    ratings = json_blocks(ROOT / "docs" / "training.md")[1]
    (tmp_path / "ratings.jsonl").write_text("\n".join(ratings) + "\n")
    block = next(lines for lang, lines in split_page(text)[0] if "$ rmserve data convert ratings.jsonl pairs.jsonl" in lines)
    at_cat = block.index("$ cat pairs.jsonl")
    done = subprocess.run([sys.executable, "-m", "rmserve", *shlex.split(block[0][2:])[1:]], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert done.stderr.splitlines() + done.stdout.splitlines() == block[1:at_cat]
    assert (tmp_path / "pairs.jsonl").read_text().splitlines() == block[at_cat + 1:]


def test_the_layout_page_names_every_module():
    # docs/layout.md is the map of the code: a module it does not name is one a reader cannot find.
    layout = (ROOT / "docs" / "layout.md").read_text()
    modules = [p for folder in ("rmserve", "service", "training") for p in (ROOT / folder).rglob("*.py")
               if p.name != "__init__.py" and "grpc_gen" not in p.parts and "_pb2" not in p.name]
    missing = sorted(str(p.relative_to(ROOT)) for p in modules if f"{p.stem}.py" not in layout)
    assert not missing, f"docs/layout.md does not name: {missing}"
