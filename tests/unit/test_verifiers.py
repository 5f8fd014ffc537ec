"""Rule-based verifiers on literal answers, their configuration errors, and each way of combining them with the
model's reward."""

from fractions import Fraction

import pytest

from rmserve.service.core.answers import answer_number, final_answer, parse_number
from rmserve.service.core.errors import ErrorKind, ScoringError
from rmserve.service.core.verifiers import Verifiers, load_config


def one(spec, mode="verifier", **config):
    return Verifiers({"mode": mode, "verifiers": [spec], **config})


def passed(spec, response, reference=None):
    (result,) = one(spec).check(response, reference)
    return result.passed


@pytest.mark.parametrize("response, where, number", [
    ("The answer is 18", "answer is", Fraction(18)),
    ("The answer is: 18.", "answer is", Fraction(18)),
    ("Final answer: -3 / 4", "answer is", Fraction(-3, 4)),
    ("so we get \\boxed{\\frac{3}{4}}.", "boxed", Fraction(3, 4)),
    ("\\boxed{\\dfrac{-1}{2}}", "boxed", Fraction(-1, 2)),
    ("\\boxed{\\frac12}", "boxed", Fraction(1, 2)),
    ("first \\boxed{2}, then \\boxed{\\frac{7}{3}}", "boxed", Fraction(7, 3)),
    ("\\boxed{\\text{18 cm}}", "boxed", Fraction(18)),
    ("\\boxed{40{,}000}", "boxed", Fraction(40000)),
    ("#### 72", "####", Fraction(72)),
    ("She makes 9 * $2 = $18 every day.", "response", Fraction(18)),
    ("It costs 1,234,567 dollars in total", "response", Fraction(1234567)),
    ("x = 40,\\!000", "response", Fraction(40000)),
    ("\u22125 degrees", "response", Fraction(-5)),
    ("  \n 0.50 \t ", "response", Fraction(1, 2)),
    ("about .25 of it", "response", Fraction(1, 4)),
    ("We get 12%", "response", Fraction(12)),
    ("no numbers here", "response", None),
    ("1/0", "response", None),
])
def test_answer_numbers(response, where, number):
    assert answer_number(response) == (where, number)


def test_final_answer_text_and_unclosed_boxes():
    assert final_answer("The answer is Paris\nbecause ...") == ("answer is", "Paris")
    assert final_answer("\\boxed{x + {y}} and more") == ("boxed", "x + {y}")
    assert final_answer("\\boxed{unclosed 5") == ("response", "\\boxed{unclosed 5")
    assert parse_number("3,5") == 3  # a decimal comma is not read as one


@pytest.mark.parametrize("response, reference, expected", [
    ("The answer is 3/4", "0.75", True),  # fractions and decimals compare exactly
    ("\\boxed{\\frac{3}{4}}", "3/4", True),
    ("\\boxed{0.750}", 0.75, True),
    ("The answer is 0.3333333", "1/3", True),  # within rel_tol 1e-6
    ("The answer is 0.333", "1/3", False),
    ("The answer is 18 dollars.", "18", True),  # trailing units
    ("The answer is $1,000.", "1000", True),  # currency and thousands separators
    ("The answer is 5 cm", "5", True),
    ("   The answer is    42   \n", 42, True),  # whitespace
    ("The answer is 42, not 7", "7", False),  # the number after the marker counts, not the last one
    ("I think 7. Then 8.", "8", True),  # no marker: the last number
    ("\\boxed{}", "1", False),
    ("The answer is -2", "2", False),
])
def test_numeric_verifier(response, reference, expected):
    assert passed({"type": "numeric"}, response, reference) is expected


def test_numeric_tolerance_is_configurable():
    assert not passed({"type": "numeric", "rel_tol": 0}, "0.3333333", "1/3")
    assert passed({"type": "numeric", "rel_tol": 0.01}, "0.333", "1/3")


@pytest.mark.parametrize("spec, response, reference, expected", [
    ({"type": "string"}, "The answer is Paris.", "paris", True),
    ({"type": "string"}, "\\boxed{  New   York }", "new york", True),
    ({"type": "string"}, "The answer is \"Paris\"", "Paris", True),
    ({"type": "string"}, "The answer is Paris, France", "Paris", False),
    ({"type": "string", "normalize": False}, "The answer is Paris", "Paris", True),
    ({"type": "string", "normalize": False}, "The answer is paris", "Paris", False),
    ({"type": "string", "normalize": False}, "The answer is Paris.", "Paris", False),
    ({"type": "string", "target": "response"}, "  YES \n", "yes", True),
    ({"type": "string", "target": "response"}, "yes, I agree", "yes", False),
    ({"type": "string"}, "\uff21\uff22\uff23", "abc", True),  # NFKC: full-width letters
])
def test_string_verifier(spec, response, reference, expected):
    assert passed(spec, response, reference) is expected


@pytest.mark.parametrize("spec, response, expected", [
    ({"type": "regex", "pattern": r"The answer is \d+"}, "So. The answer is 12.", True),
    ({"type": "regex", "pattern": r"The answer is \d+", "match": "full"}, "So. The answer is 12.", False),
    ({"type": "regex", "pattern": r"the answer", "ignore_case": True}, "THE ANSWER", True),
    ({"type": "regex", "pattern": r"the answer"}, "THE ANSWER", False),
    ({"type": "regex", "pattern": r"^Step 2:", "multiline": True}, "Step 1: a\nStep 2: b", True),
    ({"type": "regex", "pattern": r"^Step 2:"}, "Step 1: a\nStep 2: b", False),
    ({"type": "regex", "pattern": r"<think>.*</think>", "dotall": True}, "<think>a\nb</think>", True),
])
def test_regex_verifier(spec, response, expected):
    assert passed(spec, response) is expected


SCHEMA = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}


@pytest.mark.parametrize("response, expected, detail", [
    ('{"name": "Ada", "age": 36}', True, "valid"),
    ('  \n{"name": "Ada", "age": 36}\n ', True, "valid"),
    ('```json\n{"name": "Ada", "age": 36}\n```', True, "valid"),
    ('{"name": "Ada", "age": 36', False, "not valid JSON: Expecting ',' delimiter at line 1 column 26"),
    ("{'name': 'Ada', 'age': 36}", False, "not valid JSON: Expecting property name enclosed in double quotes"),
    ('{"name": "Ada", "age": 36} trailing', False, "not valid JSON: Extra data"),
    ("", False, "not valid JSON: Expecting value"),
    ('{"name": "Ada"}', False, "invalid at the top level: 'age' is a required property"),
    ('{"name": "Ada", "age": -1}', False, "invalid at age: -1 is less than the minimum of 0"),
    ('[1, 2]', False, "invalid at the top level: [1, 2] is not of type 'object'"),
])
def test_json_schema_verifier(response, expected, detail):
    (result,) = one({"type": "json_schema", "schema": SCHEMA}).check(response, None)
    assert result.passed is expected and result.detail.startswith(detail), result.detail


def test_weighted_sum_keeps_every_component():
    verifiers = Verifiers({"mode": "weighted_sum", "model_weight": 0.5, "verifiers": [
        {"type": "numeric", "name": "answer", "weight": 2.0},
        {"type": "regex", "name": "format", "pattern": "answer is", "fail_value": -1.0}]})
    right = verifiers.combine(0.8, "The answer is \\boxed{3/4}", "0.75")
    assert right.combined == pytest.approx(0.5 * 0.8 + 2.0 * 1.0 + 1.0)
    wrong = verifiers.combine(0.8, "\\boxed{0.7}", "0.75")
    assert wrong.combined == pytest.approx(0.4 + 0.0 - 1.0)
    assert wrong.to_dict() == {"mode": "weighted_sum", "model": 0.8, "combined": pytest.approx(-0.6), "verifiers": {
        "answer": {"name": "answer", "type": "numeric", "passed": False, "value": 0.0,
                   "detail": "7/10 (boxed) against 3/4"},
        "format": {"name": "format", "type": "regex", "passed": False, "value": -1.0,
                   "detail": "no search match of 'answer is'"}}}
    # model_weight defaults to 1
    plain = Verifiers({"mode": "weighted_sum", "verifiers": [{"type": "numeric"}]})
    assert plain.combine(-2.0, "5", "5").combined == pytest.approx(-1.0)


def test_gate_counts_the_model_only_when_every_verifier_passes():
    verifiers = Verifiers({"mode": "gate", "fail_reward": -10.0, "verifiers": [
        {"type": "numeric"}, {"type": "json_schema", "schema": {"type": "object"}}]})
    assert verifiers.combine(1.5, '{"answer": 4}', "4").combined == 1.5
    failed = verifiers.combine(1.5, '{"answer": 5}', "4")
    assert failed.combined == -10.0 and failed.model == 1.5
    assert [r.passed for r in failed.verifiers] == [False, True]
    assert verifiers.combine(1.5, '{"answer": 4', "4").combined == -10.0  # malformed JSON fails the gate


def test_verifier_alone_still_reports_the_model():
    verifiers = Verifiers({"mode": "verifier", "verifiers": [{"type": "numeric"}, {"type": "regex", "pattern": "^The"}]})
    result = verifiers.combine(3.0, "The answer is 4", "4")
    assert (result.combined, result.model) == (2.0, 3.0)
    assert verifiers.combine(None, "It is 4", "4").combined == 1.0


def test_requests_may_choose_configured_verifiers_by_name():
    verifiers = Verifiers({"mode": "verifier", "verifiers": [{"type": "numeric"}, {"type": "regex", "pattern": "x"}]})
    assert [r.name for r in verifiers.check("4", "4", names=["regex"])] == ["regex"]
    with pytest.raises(ScoringError) as info:
        verifiers.check("4", "4", names=["regex", "rubric"])
    assert (info.value.kind, info.value.field) == (ErrorKind.VALIDATION, "verifiers.1")
    assert "unknown verifier 'rubric'; configured: numeric, regex" in info.value.message


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_a_missing_reference_names_the_items_field(reference):
    for spec in ({"type": "numeric"}, {"type": "string"}):
        with pytest.raises(ScoringError) as info:
            one(spec).combine(1.0, "The answer is 4", reference, field="items.3.reference")
        assert (info.value.kind, info.value.field) == (ErrorKind.VALIDATION, "items.3.reference")
        assert "needs a reference" in info.value.message
    assert passed({"type": "regex", "pattern": "4"}, "4", reference)  # a regex needs none


def test_a_reference_that_is_no_number():
    with pytest.raises(ScoringError, match="numeric reference") as info:
        one({"type": "numeric"}).check("4", "four", field="items.0.reference")
    assert info.value.field == "items.0.reference"


@pytest.mark.parametrize("config, field, message", [
    ({"mode": "verifier", "verifiers": [{"type": "rubric"}]}, "verifiers.0.type", "unknown verifier type 'rubric'"),
    ({"mode": "verifier", "verifiers": [{"name": "x"}]}, "verifiers.0.type", "missing"),
    ({"mode": "verifier", "verifiers": [{"type": "json_schema", "schema": {"type": "nope"}}]},
     "verifiers.0.schema", "not a valid JSON Schema (at /type)"),
    ({"mode": "verifier", "verifiers": [{"type": "json_schema", "schema": {"properties": {"a": {"minimum": "0"}}}}]},
     "verifiers.0.schema", "not a valid JSON Schema (at /properties/a/minimum)"),
    ({"mode": "verifier", "verifiers": [{"type": "regex", "pattern": "(unclosed"}]}, "verifiers.0.pattern",
     "not a valid regular expression"),
    ({"mode": "verifier", "verifiers": [{"type": "numeric"}, {"type": "numeric"}]}, "verifiers.1.name",
     "two verifiers are named 'numeric'"),
    ({"mode": "verifier", "verifiers": [{"type": "numeric", "tolerance": 1}]}, "verifiers.0.tolerance", "Extra inputs"),
    ({"mode": "verifier", "verifiers": [{"type": "numeric", "rel_tol": -1}]}, "verifiers.0.rel_tol", "greater than"),
    ({"mode": "verifier", "verifiers": []}, "verifiers", "at least 1"),
    ({"mode": "gate", "verifiers": [{"type": "numeric"}]}, "fail_reward", "gate mode needs fail_reward"),
    ({"mode": "verifier", "fail_reward": 0, "verifiers": [{"type": "numeric"}]}, "fail_reward", "only to gate"),
    ({"mode": "gate", "fail_reward": 0, "model_weight": 2, "verifiers": [{"type": "numeric"}]}, "model_weight",
     "only to weighted_sum"),
    ({"mode": "average", "verifiers": [{"type": "numeric"}]}, "mode", "'weighted_sum', 'gate' or 'verifier'"),
    ({"mode": "gate", "fail_reward": float("nan"), "verifiers": [{"type": "numeric"}]}, "fail_reward", "finite"),
    ({"mode": "verifier", "verifiers": [{"type": "numeric", "weight": float("inf")}]}, "verifiers.0.weight", "finite"),
    ('{"mode": "gate",', "", "Invalid JSON"),
])
def test_configuration_errors_name_the_field(config, field, message):
    with pytest.raises(ScoringError) as info:
        load_config(config, field="verifiers_config")
    assert info.value.kind == ErrorKind.VALIDATION
    assert info.value.field == "verifiers_config" + (f".{field}" if field else "")
    assert message in info.value.message, info.value.message


def test_configuration_from_json_text():
    config = load_config('{"mode": "gate", "fail_reward": -1, "verifiers": [{"type": "regex", "pattern": "ok"}]}')
    assert config.names == ["regex"] and Verifiers(config).combine(2.0, "not", None).combined == -1.0


ITEM_SCHEMA = {"type": "json_schema", "name": "shape"}  # each item's reference is its schema


@pytest.mark.parametrize("response, detail", [
    ("[" * 5000 + "]" * 5000, "not valid JSON: nested too deeply"),
    ('{"n": ' + "9" * 5000 + "}", "not valid JSON: a number of more than"),
])
def test_json_the_response_cannot_hold_is_a_failed_check_not_an_error(response, detail):
    (result,) = one({"type": "json_schema", "schema": {"type": ["array", "object"]}}).check(response, None)
    assert not result.passed and result.detail.startswith(detail), result.detail


def test_a_deep_document_against_a_recursive_schema_is_a_failed_check():
    schema = {"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]}
    (result,) = one(ITEM_SCHEMA).check("[" * 900 + "1" + "]" * 900, schema)
    assert not result.passed and "nested too deeply" in result.detail, result.detail


@pytest.mark.parametrize("ref", ["#/definitions/nowhere", "https://json-schema.invalid/none.json", "file:///etc/hostname"])
def test_a_schema_reference_that_does_not_resolve_inside_the_schema_is_refused_naming_the_field(ref):
    with pytest.raises(ScoringError) as info:
        one(ITEM_SCHEMA).check('{"a": 1}', {"properties": {"a": {"$ref": ref}}}, field="items.2.reference")
    assert (info.value.kind, info.value.field) == (ErrorKind.VALIDATION, "items.2.reference")
    assert ref in info.value.message and "inside the schema" in info.value.message


def test_a_schema_in_a_request_never_makes_the_server_fetch_a_url():
    """A $ref to a URL would have the server fetch it (jsonschema's default retrieval): a request could make
    the server reach any address it can (SSRF). A real local HTTP server counts the fetches."""
    import http.server
    import threading

    fetched = []

    class Schema(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            fetched.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("content-type", "application/schema+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Schema) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
        try:
            with pytest.raises(ScoringError, match="inside the schema"):
                one(ITEM_SCHEMA).check('"text"', {"$ref": url}, field="reference")
        finally:
            server.shutdown()
    assert fetched == []
    # References inside the schema itself still resolve.
    local = {"$defs": {"name": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/name"}}}
    assert passed(ITEM_SCHEMA, '{"a": "x"}', local) and not passed(ITEM_SCHEMA, '{"a": 1}', local)


@pytest.mark.parametrize("response", ["NaN", "-Infinity", '{"a": Infinity}'])
def test_nan_and_infinity_are_not_json_numbers(response):
    (result,) = one({"type": "json_schema", "schema": {"not": {"type": "string"}}}).check(response, None)
    assert not result.passed and result.detail.startswith("not valid JSON"), result.detail


@pytest.mark.parametrize("schema, message", [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),  # as JSON text (a request's string, a gRPC reference)
    ('{"not": ' * 3000 + "{}" + "}" * 3000, "nested too deeply"),
    ('{"not": ' * 600 + "{}" + "}" * 600, "nested too deeply"),  # readable, but deeper than its check recurses
    ('{"maximum": ' + "9" * 5000 + "}", "a number of more than"),
    ('{"maximum": NaN}', "NaN is not a JSON number"),
])
def test_a_schema_reference_that_cannot_be_read_is_refused_naming_the_field(schema, message):
    with pytest.raises(ScoringError) as info:
        one(ITEM_SCHEMA).check("1", schema, field="items.0.reference")
    assert (info.value.kind, info.value.field) == (ErrorKind.VALIDATION, "items.0.reference")
    assert "not a valid JSON Schema" in info.value.message and message in info.value.message, info.value.message


@pytest.mark.parametrize("schema, where", [
    ({"type": "string", "pattern": "^(a+)+$"}, "/pattern"),
    ({"properties": {"name": {"type": "string", "pattern": "^x"}}}, "/properties/name/pattern"),
    ({"patternProperties": {"^(a+)+$": {}}}, "/patternProperties"),
    ({"prefixItems": [{"type": "string"}, {"anyOf": [{"pattern": "b"}]}]}, "/prefixItems/1/anyOf/0/pattern"),
    ({"$schema": "http://json-schema.org/draft-07/schema#", "items": [{}, {"pattern": "b"}]}, "/items/1/pattern"),
    ({"$defs": {"s": {"not": {"pattern": "c"}}}, "$ref": "#/$defs/s"}, "/$defs/s/not/pattern"),
])
def test_a_schema_sent_in_a_request_may_not_match_regular_expressions(schema, where):
    """Python's regular expressions can take exponential time on a crafted response, holding the GIL: the
    whole server would stop. A schema configured on the server may use them (its operator chose them)."""
    with pytest.raises(ScoringError) as info:
        one(ITEM_SCHEMA).check('"aaaa!"', schema, field="items.1.reference")
    assert (info.value.kind, info.value.field) == (ErrorKind.VALIDATION, "items.1.reference")
    assert f"(at {where})" in info.value.message and "regular expressions" in info.value.message
    assert passed({"type": "json_schema", "schema": {"type": "string", "pattern": "^a"}}, '"ab"')


def test_a_property_named_pattern_is_not_a_regular_expression():
    schema = {"properties": {"pattern": {"type": "string"}, "items": {"type": "integer"}}, "required": ["pattern"]}
    assert passed(ITEM_SCHEMA, '{"pattern": "x", "items": 2}', schema)
    assert not passed(ITEM_SCHEMA, '{"items": 2}', schema)


def test_checks_run_off_the_event_loop_so_that_a_slow_one_holds_only_its_request(monkeypatch):
    """A check can take seconds (jsonschema's uniqueItems compares every pair of a long array's items); the
    event loop must go on serving meanwhile. The check here waits for a coroutine to run: on the loop it
    could never be released."""
    import asyncio
    import threading
    from types import SimpleNamespace

    from rmserve.service.core import scoring

    started, release = threading.Event(), threading.Event()
    scorer = SimpleNamespace(verifiers=object(), active_calls=0)

    def held_check(verifiers, responses, fields, references, names):
        started.set()
        assert release.wait(30), "the event loop did not run while the check ran"
        return [("checked",)] * len(responses)

    monkeypatch.setattr(scoring, "check_all", held_check)
    rows = [scoring.Row("p", "r", "responses.0")]

    async def main():
        check = asyncio.create_task(scoring.Scorer.check(scorer, rows))
        assert await asyncio.to_thread(started.wait, 30)
        # The check counts as a call of its scorer: a reload meanwhile must not retire it under the request.
        assert scorer.active_calls == 1
        release.set()  # the loop runs while the check is in progress
        return await check

    assert asyncio.run(main()) == [("checked",)] and scorer.active_calls == 0
