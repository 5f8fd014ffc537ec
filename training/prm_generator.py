"""Generated process-supervision data: arithmetic word problems with solution chains labelled step by step.

No step-labelled data set can be downloaded here, so this makes one. A problem is a short story about a
quantity ("Maya has 24 marbles. Maya sells 9 marbles. ..."): a start value and 2 to 7 operations (add,
subtract, multiply, divide exactly), each told by a sentence with its own verb. A solution takes one step
per operation, and every step states its work in full, naming the action and the arithmetic:
"After selling 9, she has 24 - 9 = 15 marbles." So whether a step is right can be checked from the step
itself and the step before it, which is what a process reward model should learn to do.

A wrong chain has one injected error, at step e, of one of three kinds; every step from e on is bad
(labelled False), since it builds on the wrong value:
  operation   the step does the wrong operation for its verb, with correct arithmetic ("After selling 9,
              she has 24 + 9 = 33 marbles.");
  arithmetic  the step's result is wrong (off by 1, 2 or 10, or two digits swapped; "24 - 9 = 16");
  copy        the step starts from a wrong value, not the one the previous step (or the problem) gave:
              a carried number miscopied ("33 - 9 = 24" after a step ending "= 23"), arithmetic correct.
The steps after the error compute correctly from the wrong value, and the wrong chain's final answer always
differs from the right one.

Against shortcuts (training/step_shortcuts.py measures them): a bad step is worded like a good one (the
same templates, drawn independently of the label), its numbers are as new to the prompt as a good step's
(every step's result is new in both), and chain lengths vary. Bad steps are always a suffix, so position
is informative by nature; the error's position is drawn with P(e = k) ∝ error_decay^k, and the default
(0.4, with one right and one wrong chain per problem) keeps the position baselines near 0.58 step AUC
(docs/prm.md has the measured table; errors spread evenly would give 0.65-0.69).

Problems are told apart by their arithmetic (start value and operations), and a problem's split is a hash
of it: train, dev and test never share a problem, whatever the seed or the counts asked for.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass

import numpy as np

KINDS = ("add", "sub", "mul", "div")
ERROR_KINDS = ("operation", "arithmetic", "copy")
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
APPLY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.floordiv}
WRONG_OPERATION = {"add": ("sub", "mul"), "sub": ("add",), "mul": ("add",), "div": ("mul", "sub")}
SPLIT_SHARES = {"train": (0.0, 0.8), "dev": (0.8, 0.9), "test": (0.9, 1.0)}  # of the hashed problem space
NAMES = (("Maya", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zara", "she"), ("Omar", "he"),
         ("Lena", "she"), ("Theo", "he"), ("Iris", "she"), ("Ravi", "he"), ("Nina", "she"), ("Ezra", "he"))
ITEMS = ("marbles", "stickers", "apples", "coins", "cards", "shells", "pencils", "cookies", "stamps", "beads")
# Each action: the problem's sentence and the step's name for it ({n} operand, {name}, {item}).
ACTIONS = {
    "add": (("{name} buys {n} more {item}.", "buying {n} more"),
            ("A friend gives {name} {n} {item}.", "getting {n} from a friend"),
            ("{name} finds {n} more {item}.", "finding {n} more"),
            ("{name} wins {n} {item} in a raffle.", "winning {n} in the raffle")),
    "sub": (("{name} sells {n} {item}.", "selling {n}"),
            ("{name} gives {n} {item} to a neighbour.", "giving {n} away"),
            ("{name} loses {n} {item}.", "losing {n}"),
            ("{name} uses {n} {item} for a project.", "using {n} for the project")),
    "mul": (("Then the number of {item} grows to {n} times as many.", "growing to {n} times as many"),
            ("{name} trades them for {n} times as many {item}.", "trading for {n} times as many")),
    "div": (("{name} splits the {item} into {n} equal piles and keeps one pile.", "keeping one of {n} equal piles"),
            ("{name} shares the {item} equally among {n} people and keeps one share.", "keeping one of {n} shares")),
}
# How a step states its work; drawn per step, independently of its label, so wording says nothing.
STEP_WORDINGS = (
    "After {doing}, {pronoun} has {work} {item}.",
    "{Doing} leaves {name} with {work} {item}.",
    "{Doing}: {work}.",
    "Next comes {doing}, so the count is now {work} {item}.",
    "{name} has {work} {item} after {doing}.",
    "Then {doing} gives {work}.",
)


@dataclass(frozen=True)
class GeneratorConfig:
    """The difficulty of the generated problems and where their errors fall."""

    min_steps: int = 2
    max_steps: int = 7
    min_start: int = 8
    max_start: int = 60
    max_operand: int = 40  # added or subtracted; factors are 2-5, divisors 2-9
    max_value: int = 300  # no value in a right or wrong chain exceeds it
    error_decay: float = 0.4  # P(error at step k) ∝ error_decay ** k
    error_kinds: tuple[tuple[str, float], ...] = (("operation", 0.4), ("copy", 0.3), ("arithmetic", 0.3))

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}")
        if not 2 <= self.min_start <= self.max_start < self.max_value:
            raise ValueError("need 2 <= min_start <= max_start < max_value")
        if self.max_operand < 2 or self.error_decay <= 0:
            raise ValueError("max_operand must be at least 2 and error_decay above 0")
        unknown = [kind for kind, _ in self.error_kinds if kind not in ERROR_KINDS]
        if unknown or not self.error_kinds or any(w < 0 for _, w in self.error_kinds) or \
                sum(w for _, w in self.error_kinds) <= 0:
            raise ValueError(f"error kinds must be weights >= 0 (not all 0) of {ERROR_KINDS}, got {self.error_kinds}")


def parse_error_kinds(text: str) -> tuple[tuple[str, float], ...]:
    """'operation=0.4,copy=0.3,arithmetic=0.3' → (('operation', 0.4), ...); a bare name weighs 1."""
    kinds = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, weight = part.partition("=")
        try:
            kinds.append((name.strip(), float(weight) if weight else 1.0))
        except ValueError:
            raise ValueError(f"error kind weight must be a number: {part!r}") from None
    return tuple(kinds)


@dataclass(frozen=True)
class Operation:
    kind: str
    operand: int
    wording: int  # index into ACTIONS[kind]


@dataclass(frozen=True)
class Work:
    """What one step computes: left SYMBOL[kind] operand = result (the result may be a slip)."""

    left: int
    kind: str
    operand: int
    result: int


@dataclass(frozen=True)
class Problem:
    start: int
    operations: tuple[Operation, ...]
    name: int  # index into NAMES
    item: int  # index into ITEMS

    @property
    def key(self) -> tuple:
        """The arithmetic, which tells problems apart (names and wording do not)."""
        return self.start, tuple((op.kind, op.operand) for op in self.operations)

    def solution(self) -> list[Work]:
        works, value = [], self.start
        for op in self.operations:
            result = APPLY[op.kind](value, op.operand)
            works.append(Work(value, op.kind, op.operand, result))
            value = result
        return works

    @property
    def answer(self) -> int:
        return self.solution()[-1].result

    def prompt(self) -> str:
        name, _ = NAMES[self.name]
        item = ITEMS[self.item]
        sentences = [f"{name} has {self.start} {item}."]
        for op in self.operations:
            sentences.append(ACTIONS[op.kind][op.wording][0].format(name=name, n=op.operand, item=item))
        sentences.append(f"How many {item} does {name} have at the end?")
        return " ".join(sentences)


def split_of(key: tuple) -> str:
    """The split a problem belongs to, from a hash of its arithmetic: the same in every run."""
    share = int(hashlib.sha256(repr(key).encode()).hexdigest()[:12], 16) / 16**12
    return next(name for name, (low, high) in SPLIT_SHARES.items() if low <= share < high)


def _operation(value: int, rng: np.random.Generator, config: GeneratorConfig) -> Operation | None:
    """A random operation valid from `value` (the result stays in 1..max_value, a division is exact)."""
    choices: dict[str, list[int]] = {
        "add": list(range(2, min(config.max_operand, config.max_value - value) + 1)),
        "sub": list(range(2, min(config.max_operand, value - 1) + 1)),
        "mul": list(range(2, min(5, config.max_value // value) + 1)),
        "div": [d for d in range(2, 10) if value % d == 0 and value // d >= 2],
    }
    weights = {"add": 0.35, "sub": 0.35, "mul": 0.15, "div": 0.15}
    kinds = [kind for kind in KINDS if choices[kind]]
    if not kinds:
        return None
    p = np.array([weights[k] for k in kinds])
    kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
    return Operation(kind, int(rng.choice(choices[kind])), int(rng.integers(len(ACTIONS[kind]))))


def random_problem(rng: np.random.Generator, config: GeneratorConfig) -> Problem | None:
    value = start = int(rng.integers(config.min_start, config.max_start + 1))
    operations = []
    for _ in range(int(rng.integers(config.min_steps, config.max_steps + 1))):
        op = _operation(value, rng, config)
        if op is None:
            return None
        operations.append(op)
        value = APPLY[op.kind](value, op.operand)
    return Problem(start, tuple(operations), int(rng.integers(len(NAMES))), int(rng.integers(len(ITEMS))))


def _slip(value: int, rng: np.random.Generator, config: GeneratorConfig) -> int | None:
    """A plausible wrong version of a number: off by 1, 2 or 10, or its last two digits swapped."""
    candidates = {value + d for d in (-10, -2, -1, 1, 2, 10)}
    if value >= 10 and str(value)[-1] != str(value)[-2]:
        digits = str(value)
        candidates.add(int(digits[:-2] + digits[-1] + digits[-2]))
    options = sorted(c for c in candidates if 1 <= c <= config.max_value and c != value)
    return int(rng.choice(options)) if options else None


def _valid(kind: str, left: int, operand: int, config: GeneratorConfig) -> bool:
    if kind == "div" and left % operand:
        return False
    return 1 <= APPLY[kind](left, operand) <= config.max_value


def wrong_solution(problem: Problem, error: str, position: int, rng: np.random.Generator,
                   config: GeneratorConfig) -> list[Work] | None:
    """The solution with one error of kind `error` at step `position`, carried to the end; None when this
    draw is impossible (a value out of range, an inexact division, or the right final answer again)."""
    works, value = [], problem.start
    for i, op in enumerate(problem.operations):
        left, kind = value, op.kind
        if i == position and error == "copy":
            left = _slip(value, rng, config)
        elif i == position and error == "operation":
            kind = str(rng.choice(WRONG_OPERATION[op.kind]))
        if left is None or not _valid(kind, left, op.operand, config):
            return None
        result = APPLY[kind](left, op.operand)
        if i == position and error == "arithmetic":
            result = _slip(result, rng, config)
            if result is None:
                return None
        works.append(Work(left, kind, op.operand, result))
        value = result
    return works if value != problem.answer else None


def render_steps(problem: Problem, works: list[Work], rng: np.random.Generator) -> tuple[str, ...]:
    """Each step in words: the problem's own action for that step, and the work as done (right or not)."""
    name, pronoun = NAMES[problem.name]
    item = ITEMS[problem.item]
    steps = []
    for op, work in zip(problem.operations, works):
        doing = ACTIONS[op.kind][op.wording][1].format(n=op.operand)
        text = f"{work.left} {SYMBOL[work.kind]} {work.operand} = {work.result}"
        wording = STEP_WORDINGS[int(rng.integers(len(STEP_WORDINGS)))]
        steps.append(wording.format(doing=doing, Doing=doing[0].upper() + doing[1:], pronoun=pronoun,
                                    name=name, work=text, item=item))
    return tuple(steps)


def wrong_chain(problem: Problem, rng: np.random.Generator, config: GeneratorConfig,
                tries: int = 20) -> tuple[list[Work], str, int] | None:
    """A wrong solution with its error's kind and step. The step is drawn first, with P(k) ∝ error_decay^k,
    and kept while kinds and slips are redrawn, so that impossible draws do not move errors later; a new
    step is drawn only when `tries` fail at this one. None when no step takes an error."""
    names = [kind for kind, _ in config.error_kinds]
    kind_p = np.array([w for _, w in config.error_kinds])
    position_p = config.error_decay ** np.arange(len(problem.operations))
    for _ in range(tries):
        position = int(rng.choice(len(position_p), p=position_p / position_p.sum()))
        for _ in range(tries):
            error = names[rng.choice(len(names), p=kind_p / kind_p.sum())]
            works = wrong_solution(problem, error, position, rng, config)
            if works is not None:
                return works, error, position
    return None


def chain_row(problem: Problem, problem_id: str, works: list[Work], rng: np.random.Generator,
              error: tuple[str, int] | None = None) -> dict:
    """A stepwise row as training/steps.py reads it (prompt, completions, labels, problem, answer), plus
    `error`: {kind, step}, or null for a right chain. (This module imports nothing of rmserve, so that
    `rmserve data generate-steps --help` can show its defaults on every install.)"""
    steps = render_steps(problem, works, rng)
    first_bad = error[1] if error else len(steps)
    return {"prompt": problem.prompt(), "completions": list(steps), "labels": [i < first_bad for i in range(len(steps))],
            "problem": problem_id, "answer": str(problem.answer),
            "error": {"kind": error[0], "step": error[1]} if error else None}
