"""Rule-based verifiers beside the reward model, and how their results combine with the model's reward.

The scoring core calls this for each scored response that has verifiers configured; nothing here knows
HTTP or runs a model. Configuration is declarative (pydantic, `VerifierConfig`), checked once at load:

  {"mode": "weighted_sum" | "gate" | "verifier",
   "verifiers": [{"type": "numeric", "name": "answer", "rel_tol": 1e-6}, ...],
   "model_weight": 1.0,            # weighted_sum only
   "fail_reward": -5.0}            # gate only, and required there

Verifier types (each has a `name`, default its type, unique in the list; a passing check is worth
`pass_value` (1.0), a failing one `fail_value` (0.0), scaled by `weight` (1.0) in a sum):
  numeric      the response's final answer (service/core/answers.py: `\\boxed{}`, "The answer is ...",
               "####", else its last number) equals the item's reference as a number, exactly for integers,
               decimals and fractions (0.5 = 1/2 = \\frac{1}{2}), or within `rel_tol`. Needs a reference.
  string       the final answer (or with `target: "response"` the whole response) equals the reference:
               `normalize: true` (the default) compares them after Unicode NFKC, case folding, collapsing
               whitespace and dropping surrounding quotes, `$` and a final period; false compares exactly.
               Needs a reference.
  regex        `pattern` is found in the response (`match: "search"`, the default) or matches all of it
               (`"full"`); `ignore_case`, `multiline`, `dotall` set the flags. No reference.
  json_schema  the response (or the code block it consists of, ```json ... ```) parses as JSON and is valid
               against `schema` (JSON Schema, checked against its own metaschema at load). Without `schema`,
               each item's reference is its schema (a JSON object, or its JSON text), checked the same way
               when the request comes (an invalid one is a validation error naming the reference). A `$ref`
               resolves inside its schema only: no schema makes the server fetch a URL or read a file.

Modes (the model's reward is whatever the caller passes: raw or normalized):
  weighted_sum  combined = model_weight × model + Σ weight_i × value_i
  gate          combined = model when every verifier passes, else fail_reward (set it below the rewards the
                model gives, or a failing answer can outscore a passing one)
  verifier      combined = Σ weight_i × value_i; the model's reward is still reported.
Every component is kept in `CombinedReward`: the model's reward, each verifier's result (passed, value,
detail saying what was compared) and the combined value.

Errors are `ScoringError`s of kind VALIDATION naming the field: an unknown verifier type or name, a bad
regex, an invalid schema, a configuration field of another mode (at load, fields under `verifiers.N`), and
a missing or unreadable reference (at check time, under the caller's field, e.g. `items.3.reference`).
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rmserve.service.core.answers import (
    MAX_NUMBER_CHARS,
    answer_number,
    final_answer,
    numbers_match,
    parse_number,
)
from rmserve.service.core.errors import ErrorKind, ScoringError

Reference = str | int | float | dict | None
TYPES = ("numeric", "string", "regex", "json_schema")
FENCED = re.compile(r"\A```[\w-]*[ \t]*\n(.*?)\n?```\Z", re.DOTALL)


class _FieldError(ValueError):
    """A configuration error about one field (pydantic keeps the exception, so load_config can name it)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _jsonschema():
    """The jsonschema package, imported when a json_schema verifier is configured (it is in the serve extra)."""
    try:
        import jsonschema
    except ImportError:
        raise ValueError("the json_schema verifier needs the jsonschema package "
                         "(pip install 'rmserve[serve]')") from None
    return jsonschema


def _no_retrieval() -> Any:
    """A reference registry that retrieves nothing: without one, jsonschema fetches any URL a `$ref` names
    (http://, file://), which a schema sent in a request could point anywhere the server can reach."""
    from referencing import Registry  # installed with jsonschema

    return Registry()


class _Verifier(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = ""
    weight: float = 1.0
    pass_value: float = 1.0
    fail_value: float = 0.0

    def label(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class NumericAnswer(_Verifier):
    type: Literal["numeric"]
    rel_tol: float = Field(1e-6, ge=0.0, lt=1.0)


class StringMatch(_Verifier):
    type: Literal["string"]
    normalize: bool = True
    target: Literal["answer", "response"] = "answer"


class RegexMatch(_Verifier):
    type: Literal["regex"]
    pattern: str
    match: Literal["search", "full"] = "search"
    ignore_case: bool = False
    multiline: bool = False
    dotall: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"not a valid regular expression: {e}") from None
        return pattern


class _NotJsonNumber(ValueError):
    pass


def _not_a_number(name: str) -> Any:
    raise _NotJsonNumber(name)  # NaN, Infinity, -Infinity: Python's json reads them, JSON has none


# Keywords whose values are subschemas: a map of them, a list of them, or one (draft 4 to 2020-12).
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies")
_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SUBSCHEMAS = ("additionalProperties", "items", "contains", "not", "if", "then", "else", "propertyNames",
               "unevaluatedItems", "unevaluatedProperties", "additionalItems", "contentSchema")


def regex_keyword(schema: Any, where: str = "") -> str | None:
    """Where a schema asks for a regular expression match (`pattern`, `patternProperties`), or None. Python's
    regular expressions can take exponential time on a crafted response (`^(a+)+$` against 30 a's and a
    '!' takes seconds, doubling with each 'a') while holding the GIL, which stops the whole server: a schema
    sent in a request may not hold one."""
    if not isinstance(schema, dict):
        return None
    for keyword in ("pattern", "patternProperties"):
        if keyword in schema:
            return f"{where}/{keyword}"
    for keyword in _SUBSCHEMA_MAPS:
        if isinstance(members := schema.get(keyword), dict):
            for name, member in members.items():
                if (found := regex_keyword(member, f"{where}/{keyword}/{name}")) is not None:
                    return found
    for keyword in _SUBSCHEMA_LISTS:
        if isinstance(members := schema.get(keyword), list):
            for i, member in enumerate(members):
                if (found := regex_keyword(member, f"{where}/{keyword}/{i}")) is not None:
                    return found
    for keyword in _SUBSCHEMAS:
        if (found := regex_keyword(schema.get(keyword), f"{where}/{keyword}")) is not None:
            return found
    return None


def checked_schema(schema: Any) -> dict[str, Any]:
    """`schema` (a JSON object, or its JSON text) after checking it against its metaschema; ValueError says where."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema, parse_constant=_not_a_number)
        except json.JSONDecodeError as e:
            raise ValueError(f"not a valid JSON Schema: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        except _NotJsonNumber as e:
            raise ValueError(f"not a valid JSON Schema: not JSON: {e} is not a JSON number") from None
        except RecursionError:
            raise ValueError("not a valid JSON Schema: nested too deeply") from None
        except ValueError:  # an integer longer than Python converts
            raise ValueError(f"not a valid JSON Schema: a number of more than {sys.get_int_max_str_digits()} "
                             "digits") from None
    if not isinstance(schema, dict):
        raise ValueError(f"not a valid JSON Schema: a schema is a JSON object, got {type(schema).__name__}")
    jsonschema = _jsonschema()
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "".join(f"/{p}" for p in e.absolute_path) or "the top level"
        raise ValueError(f"not a valid JSON Schema (at {where}): {e.message}") from None
    except RecursionError:
        raise ValueError("not a valid JSON Schema: nested too deeply") from None
    return schema


class JsonSchemaCheck(_Verifier):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] | None = Field(None, alias="schema")  # None: each item's reference is its schema

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if schema is None else checked_schema(schema)


VerifierSpec = Annotated[NumericAnswer | StringMatch | RegexMatch | JsonSchemaCheck, Field(discriminator="type")]
NEEDS_REFERENCE = ("numeric", "string")


class VerifierConfig(BaseModel):
    """How the server combines verifiers with the model's reward (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    mode: Literal["weighted_sum", "gate", "verifier"]
    verifiers: list[VerifierSpec] = Field(min_length=1)
    model_weight: float | None = None
    fail_reward: float | None = None

    @model_validator(mode="after")
    def _fits_mode(self) -> VerifierConfig:
        names = [v.label() for v in self.verifiers]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise _FieldError(f"verifiers.{i}.name", f"two verifiers are named {name!r}; give each a distinct name")
        if self.mode == "gate" and self.fail_reward is None:
            raise _FieldError("fail_reward", "gate mode needs fail_reward: the combined value when a verifier fails")
        if self.mode != "gate" and self.fail_reward is not None:
            raise _FieldError("fail_reward", f"applies only to gate mode, not {self.mode}")
        if self.mode != "weighted_sum" and self.model_weight is not None:
            raise _FieldError("model_weight", f"applies only to weighted_sum mode, not {self.mode}")
        return self

    @property
    def names(self) -> list[str]:
        return [v.label() for v in self.verifiers]


def load_config(data: object, field: str = "verifiers_config") -> VerifierConfig:
    """Validate a configuration (a dict, or JSON text); errors are ScoringError(VALIDATION) naming the field."""
    try:
        if isinstance(data, str | bytes):
            return VerifierConfig.model_validate_json(data)
        return VerifierConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        location = [str(p) for p in first["loc"] if p not in TYPES]  # drop the union's tag from the path
        message = first["msg"].removeprefix("Value error, ")
        error = first.get("ctx", {}).get("error")
        if isinstance(error, _FieldError):
            location, message = [*location, *error.field.split(".")], str(error)
        elif first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            given = first["input"].get("type") if isinstance(first["input"], dict) else None
            location.append("type")
            message = (f"unknown verifier type {given!r}" if given is not None else "missing") + \
                f"; the types are {', '.join(TYPES)}"
        raise ScoringError(ErrorKind.VALIDATION, message, ".".join([field, *location])) from None


@dataclass(frozen=True)
class VerifierResult:
    name: str
    type: str
    passed: bool
    value: float  # pass_value or fail_value
    detail: str  # what was compared, or why it failed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "passed": self.passed, "value": self.value,
                "detail": self.detail}


@dataclass(frozen=True)
class CombinedReward:
    mode: str
    model: float | None
    verifiers: tuple[VerifierResult, ...]
    combined: float

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "model": self.model, "combined": self.combined,
                "verifiers": {v.name: v.to_dict() for v in self.verifiers}}


def _normalized(text: str) -> str:
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    text = text.strip("\"'`$ ")
    return text[:-1].rstrip() if text.endswith(".") else text


def _json_body(response: str) -> str:
    text = response.strip()
    fenced = FENCED.match(text)
    return fenced.group(1) if fenced else text


def _needs_reference(spec: VerifierSpec) -> bool:
    return spec.type in NEEDS_REFERENCE or (isinstance(spec, JsonSchemaCheck) and spec.json_schema is None)


def _check(spec: VerifierSpec, response: str, reference: Reference, field: str) -> tuple[bool, str]:
    if isinstance(reference, dict) and not isinstance(spec, JsonSchemaCheck):
        raise ScoringError(ErrorKind.VALIDATION, f"verifier {spec.label()!r} ({spec.type}) needs a text or number "
                           "reference, not an object", field)
    if _needs_reference(spec) and (reference is None or (isinstance(reference, str) and not reference.strip())):
        raise ScoringError(ErrorKind.VALIDATION, f"verifier {spec.label()!r} ({spec.type}) needs a reference "
                           "answer for this item", field)
    if isinstance(spec, NumericAnswer):
        expected = parse_number(str(reference))
        if expected is None:
            shown = str(reference) if len(str(reference)) <= 80 else str(reference)[:80] + "..."
            raise ScoringError(ErrorKind.VALIDATION, f"verifier {spec.label()!r} needs a numeric reference (at most "
                               f"{MAX_NUMBER_CHARS} characters), got {shown!r}", field)
        where, got = answer_number(response)
        if got is None:
            return False, f"no number found ({where})"
        return numbers_match(got, expected, spec.rel_tol), f"{got} ({where}) against {expected}"
    if isinstance(spec, StringMatch):
        got = final_answer(response)[1] if spec.target == "answer" else response
        want = str(reference)
        same = _normalized(got) == _normalized(want) if spec.normalize else got == want
        return same, f"{got.strip()[:80]!r} against {want[:80]!r}"
    if isinstance(spec, RegexMatch):
        flags = (re.IGNORECASE if spec.ignore_case else 0) | (re.MULTILINE if spec.multiline else 0) | \
            (re.DOTALL if spec.dotall else 0)
        found = (re.search if spec.match == "search" else re.fullmatch)(spec.pattern, response, flags)
        return found is not None, "matched" if found else f"no {spec.match} match of {spec.pattern!r}"
    schema = spec.json_schema
    if schema is None:  # the item's own schema
        try:
            schema = checked_schema(reference)
            regex = regex_keyword(schema)
        except ValueError as e:
            raise ScoringError(ErrorKind.VALIDATION, f"verifier {spec.label()!r}: {e}", field) from None
        except RecursionError:
            raise ScoringError(ErrorKind.VALIDATION, f"verifier {spec.label()!r}: not a valid JSON Schema: nested "
                               "too deeply", field) from None
        if regex is not None:
            raise ScoringError(ErrorKind.VALIDATION, f"verifier {spec.label()!r}: a schema sent in a request may not "
                               f"match regular expressions (at {regex}): one can take exponential time on a crafted "
                               "response; configure such a schema on the server (verifiers_config)", field)
    try:
        document = json.loads(_json_body(response), parse_constant=_not_a_number)
    except json.JSONDecodeError as e:
        return False, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except _NotJsonNumber as e:
        return False, f"not valid JSON: {e} is not a JSON number"
    except RecursionError:
        return False, "not valid JSON: nested too deeply to read"
    except ValueError:  # an integer longer than Python converts
        return False, f"not valid JSON: a number of more than {sys.get_int_max_str_digits()} digits"
    jsonschema = _jsonschema()
    from referencing.exceptions import Unresolvable  # installed with jsonschema, which raises it wrapped

    validator = jsonschema.validators.validator_for(schema)(schema, registry=_no_retrieval())
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    except RecursionError:
        return False, "invalid: nested too deeply to check"
    except Unresolvable as e:
        if spec.json_schema is not None:
            raise  # the server's own schema: its configuration, not the request, is wrong
        raise ScoringError(ErrorKind.VALIDATION, f"verifier {spec.label()!r}: the schema's $ref {str(e)[:200]!r} does "
                           "not resolve inside the schema (no other document is fetched)", field) from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        return False, f"invalid at {where}: {error.message}"
    return True, "valid"


class Verifiers:
    """A loaded configuration: checks responses and combines the results with the model's reward."""

    def __init__(self, config: VerifierConfig | dict | str):
        self.config = config if isinstance(config, VerifierConfig) else load_config(config)

    def select(self, names: list[str] | None, field: str = "verifiers") -> list[VerifierSpec]:
        """The configured verifiers a request names (all when None); an unknown name is a VALIDATION error."""
        if names is None:
            return list(self.config.verifiers)
        by_name = {v.label(): v for v in self.config.verifiers}
        for i, name in enumerate(names):
            if name not in by_name:
                raise ScoringError(ErrorKind.VALIDATION, f"unknown verifier {name!r}; configured: "
                                   f"{', '.join(self.config.names)}", f"{field}.{i}")
        return [by_name[name] for name in names]

    def check(self, response: str, reference: Reference, field: str = "reference",
              names: list[str] | None = None) -> tuple[VerifierResult, ...]:
        results = []
        for spec in self.select(names):
            passed, detail = _check(spec, response, reference, field)
            results.append(VerifierResult(spec.label(), spec.type, passed,
                                          spec.pass_value if passed else spec.fail_value, detail))
        return tuple(results)

    def combine(self, model_reward: float | None, response: str, reference: Reference,
                field: str = "reference", names: list[str] | None = None) -> CombinedReward:
        """Every verifier's result and the combined reward for one response."""
        return self.combine_results(model_reward, self.check(response, reference, field, names))

    def combine_results(self, model_reward: float | None, results: tuple[VerifierResult, ...]) -> CombinedReward:
        """The combined reward of results already checked (so that a request is refused before scoring)."""
        config = self.config
        if model_reward is None and config.mode != "verifier":
            raise ScoringError(ErrorKind.INTERNAL, f"{config.mode} mode needs the model's reward")
        weights = {v.label(): v.weight for v in config.verifiers}
        if config.mode == "gate":
            combined = model_reward if all(r.passed for r in results) else config.fail_reward
        else:
            combined = sum(weights[r.name] * r.value for r in results)
            if config.mode == "weighted_sum":
                weight = 1.0 if config.model_weight is None else config.model_weight
                combined += weight * model_reward
        return CombinedReward(config.mode, model_reward, results, float(combined))
