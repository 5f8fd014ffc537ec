"""Final answers in free text: where a response states its answer, and that answer as an exact number.

Used by the rule-based verifiers (service/core/verifiers.py). No HTTP, no model.

Where the answer is (the first rule that finds one wins):
  1. the last `\\boxed{...}` (or `\\fbox{...}`), braces nested to any depth;
  2. the text after the last "answer is" or "answer:" ("The answer is: 18", "Final answer: 3/4"), to the
     end of its line;
  3. the text after the last GSM8K-style "####";
  4. otherwise the whole response.

A number in that text (the first one after an answer marker or in a box, the last one in a whole
response) is read as an exact fraction:
  - integers and decimals, signed ("-3", "−3", "+0.50", ".5");
  - thousands separators: "1,234,567", LaTeX "40{,}000" and "40,\\!000", thin spaces "40\\,000" and U+2009 /
    U+202F between digit groups of three (a comma not followed by exactly three digits separates numbers);
  - fractions "3/4", "-3 / 4", "\\frac{3}{4}", "\\dfrac", "\\tfrac", "\\frac34";
  - around it, currency and units are ignored: "$18.00", "\\$18", "18 dollars", "5 cm", "12%", "90^\\circ",
    "\\text{ km}" (a percent sign is a unit: "12%" reads as 12, not 0.12).
Not read: mixed numbers ("1 1/2" is 1, then 1/2), scientific notation, decimal commas ("3,5"), roots and
other expressions, and a number (or fraction) longer than `MAX_NUMBER_CHARS`: no answer has that many
digits, and Python refuses to turn more than 4300 digits into an int.
"""

from __future__ import annotations

import re
from fractions import Fraction

BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
ANSWER_MARKER = re.compile(r"answer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
GSM8K_MARKER = re.compile(r"####")
_DIGIT_GROUP_GAP = re.compile(r"(?<=\d)(?:\{,\}|,\\!|\\!|\\,|\\ |\\;|[\u2009\u202f])(?=\d{3}(?!\d))")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*(?:\{\s*([^{}]*?)\s*\}|(\d))\s*(?:\{\s*([^{}]*?)\s*\}|(\d))")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|[-+]?\.\d+"
MAX_NUMBER_CHARS = 1000
NUMBER_TOKEN = re.compile(rf"(?<![\w.])({_NUMBER})(?:\s*/\s*({_NUMBER}))?(?![\w])")


def _braced(text: str, start: int) -> str | None:
    """The text inside the brace group that opens at text[start - 1]; None when it never closes."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return None


def final_answer(response: str) -> tuple[str, str]:
    """(where the answer was found: "boxed" | "answer is" | "####" | "response", the answer's text)."""
    boxes = list(BOXED.finditer(response))
    for box in reversed(boxes):
        inside = _braced(response, box.end())
        if inside is not None:
            return "boxed", inside
    for marker, name in ((ANSWER_MARKER, "answer is"), (GSM8K_MARKER, "####")):
        found = list(marker.finditer(response))
        if found:
            return name, response[found[-1].end():].split("\n", 1)[0]
    return "response", response


def _plain(text: str) -> str:
    """LaTeX and typography that hide a number, made plain: fractions, text commands, separators, minus."""
    text = _TEXT_COMMAND.sub(r" \1 ", text)
    text = _LATEX_FRACTION.sub(lambda m: f" ({m.group(1) or m.group(2)})/({m.group(3) or m.group(4)}) ", text)
    text = re.sub(r"\((\s*[-+]?[\d.,]+\s*)\)", r"\1", text)  # the parentheses a LaTeX fraction left
    text = _DIGIT_GROUP_GAP.sub("", text.replace("{,}", ","))
    return text.replace("\u2212", "-").replace("\\$", "$").replace("\\%", "%").replace("\\!", "")


def _fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", "").lstrip("+"))


def parse_number(text: str, last: bool = False) -> Fraction | None:
    """The first (or `last`) number in `text` as an exact fraction; None when there is none (or x/0, or it
    is longer than MAX_NUMBER_CHARS)."""
    tokens = list(NUMBER_TOKEN.finditer(_plain(text)))
    if not tokens:
        return None
    token = tokens[-1] if last else tokens[0]
    if len(token.group(0)) > MAX_NUMBER_CHARS:
        return None
    value = _fraction(token.group(1))
    if token.group(2) is not None:
        denominator = _fraction(token.group(2))
        if denominator == 0:
            return None
        value /= denominator
    return value


def answer_number(response: str) -> tuple[str, Fraction | None]:
    """(where the answer was found, its number): the first number after a marker, else the response's last."""
    where, text = final_answer(response)
    return where, parse_number(text, last=where == "response")


def numbers_match(got: Fraction, expected: Fraction, rel_tol: float) -> bool:
    """Equal exactly, or within `rel_tol` of the larger magnitude (0.3333333 against 1/3 at 1e-6)."""
    if got == expected:
        return True
    return abs(got - expected) <= Fraction(rel_tol) * max(abs(got), abs(expected))
