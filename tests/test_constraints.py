"""Constrained decoding (``ggro.constraints``) on the tiny random models, steering on.

Random weights are the hard case: nothing makes a random model close a string or an array, so every output
parsing and validating here comes from the mask and from closing the structure within the budget. The
nudge checks use an oracle written independently of ``ggro.structure``: a nudge may only sit inside a JSON
string value whose schema is free text (or in plain text around tool calls), and its token holds no quote.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from ggro import Constraint, GGROConfig, GGRODecoder, GGROResult
from ggro.constraints import _closed
from ggro.structure import JsonScanner, is_free_text, schema_at
from ggro.testing import tiny_decoder
from ggro.tools import parse_tool_calls

STEERING = GGROConfig(entropy_threshold=0.5, refinement_steps=3, nudge_top_k=8, max_new_tokens=64)


def examples(n: int) -> settings:
    scale = int(os.environ.get("GGRO_PROPERTY_SCALE", "1"))
    return settings(
        max_examples=n * scale,
        derandomize=scale == 1,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )


@cache
def decoder() -> GGRODecoder:
    return tiny_decoder(seed=3, config=STEERING)


# ---------------------------------------------------------------------------------------------- schemas
_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6)
_LEAVES = st.one_of(
    st.just({"type": "string"}),
    st.integers(1, 12).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "integer"}),
    st.tuples(st.integers(-50, 0), st.integers(0, 50)).map(
        lambda r: {"type": "integer", "minimum": r[0], "maximum": r[1]}
    ),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(st.text(alphabet="abcxyz ", min_size=1, max_size=5), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    ),
)


def _objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def build(props: dict[str, dict[str, Any]], required_mask: list[bool]) -> dict[str, Any]:
        names = list(props)
        required = [n for n, r in zip(names, required_mask, strict=False) if r]
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

    return st.dictionaries(_NAMES, children, min_size=1, max_size=4).flatmap(
        lambda props: st.lists(st.booleans(), min_size=len(props), max_size=len(props)).map(
            lambda mask: build(props, mask)
        )
    )


def _arrays(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.tuples(children, st.integers(0, 2), st.integers(2, 4)).map(
        lambda t: {"type": "array", "items": t[0], "minItems": t[1], "maxItems": t[2]}
    )


SCHEMAS = st.recursive(_LEAVES, lambda inner: st.one_of(_objects(inner), _arrays(inner)), max_leaves=8).filter(
    lambda s: s.get("type") in ("object", "array")
)


def shortest(constraint: Constraint) -> int:
    needed = constraint.start(decoder().grammar_vocabulary()).closing_length(4096)
    assert needed is not None
    return needed


# ---------------------------------------------------------------------------------------------- the oracle
def _string_values(text: str) -> list[tuple[int, int, list[str | int]]]:
    """(start, end, path) of every JSON string *value* (not key) in ``text``: ``start`` just after its opening
    quote, ``end`` at its closing quote. Strings are delimited with the standard library's own
    ``json.decoder.scanstring``; a string followed by ``:`` is a key."""
    found: list[tuple[int, int, list[str | int]]] = []
    stack: list[list[Any]] = []  # [kind, current key or index]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            value, end = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]
            rest = text[end:].lstrip()
            if rest.startswith(":") and stack and stack[-1][0] == "{":
                stack[-1][1] = value
            else:
                found.append((i + 1, end - 1, [frame[1] for frame in stack]))
            i = end
            continue
        if ch in "{[":
            stack.append([ch, None if ch == "{" else 0])
        elif ch in "}]":
            stack.pop()
        elif ch == "," and stack and stack[-1][0] == "[":
            stack[-1][1] += 1
        i += 1
    return found


def check_nudges(result: GGROResult, schema: dict[str, Any], dec: GGRODecoder, offset: int = 0) -> int:
    """Every nudge sits strictly inside a free-text string value (after its opening quote, before its closing
    one) of the final JSON, which starts at character ``offset`` of the response; returns how many."""
    values = _string_values(result.text[offset:])
    for nudge in result.nudges:
        prefix = dec.tokenizer.decode(result.token_ids[: nudge.insertion_position])
        at = len(prefix) - offset
        inside = [path for start, end, path in values if start <= at <= end]
        note(f"nudge at char {at} ({nudge.nudge_token!r}) in {result.text!r}; values {values}")
        assert inside, "a nudge landed outside every string value"
        assert is_free_text(schema_at(schema, inside[0])), f"a nudge landed in a non-free-text value {inside[0]}"
        assert nudge.landed_in == "value"
        escaped = (len(prefix) - len(prefix.rstrip("\\"))) % 2 == 1  # the token starts after a lone backslash
        assert '"' not in (nudge.nudge_token[1:] if escaped else nudge.nudge_token)  # an escaped quote stays inside
    return len(result.nudges)


# ---------------------------------------------------------------------------------------------- properties
NUDGE_TALLY: dict[str, int] = {"value": 0, "text": 0, "responses": 0}


@examples(110)
@given(schema=SCHEMAS, extra=st.integers(0, 40), prompt=st.sampled_from(["hi", "a JSON please", "x"]))
def test_structured_outputs_always_parse_and_validate(schema: dict[str, Any], extra: int, prompt: str) -> None:
    constraint = Constraint.json_schema(schema)
    budget = shortest(constraint) + extra
    result = decoder().generate(prompt, constraint=constraint, max_new_tokens=budget)[0]
    note(f"{budget=} {result.text!r}")
    value = json.loads(result.text)
    jsonschema.validate(value, schema)
    assert len(result.token_ids) <= budget
    NUDGE_TALLY["value"] += check_nudges(result, schema, decoder())
    NUDGE_TALLY["responses"] += 1


TOOL_PARAMETERS = st.lists(st.tuples(_NAMES, _objects(_LEAVES)), min_size=1, max_size=3, unique_by=lambda t: t[0]).map(
    lambda tools: [
        {"type": "function", "function": {"name": n, "description": "a tool", "parameters": p}} for n, p in tools
    ]
)


@examples(90)
@given(
    tools=TOOL_PARAMETERS,
    choice=st.sampled_from(["required", "any", "name"]),
    tool_format=st.sampled_from(["hermes", "llama3_json"]),
    extra=st.integers(0, 40),
)
def test_forced_tool_calls_always_parse_and_validate(
    tools: list[dict[str, Any]], choice: str, tool_format: str, extra: int
) -> None:
    chosen = tools[-1]["function"]["name"] if choice == "name" else choice
    constraint = Constraint.for_tools(tools, chosen, tool_format)  # type: ignore[arg-type]
    assert constraint is not None
    budget = shortest(constraint) + extra
    result = decoder().generate("call a tool", constraint=constraint, max_new_tokens=budget)[0]
    note(f"{budget=} {result.text!r}")
    parsed = parse_tool_calls(result.text, tool_format, tools=tools)  # type: ignore[arg-type]
    assert not parsed.invalid_tool_calls, parsed.invalid_tool_calls
    assert parsed.tool_calls
    if choice == "name":
        assert {c.name for c in parsed.tool_calls} == {chosen}
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for call in parsed.tool_calls:
        jsonschema.validate(call.arguments, schemas[call.name])
    if len(parsed.tool_calls) == 1 and result.text.lstrip().startswith("{"):
        key = "arguments" if tool_format == "hermes" else "parameters"
        call_schema = {"type": "object", "properties": {key: schemas[parsed.tool_calls[0].name]}}
        NUDGE_TALLY["value"] += check_nudges(
            result, call_schema, decoder(), len(result.text) - len(result.text.lstrip())
        )
    else:
        assert all(n.landed_in == "value" for n in result.nudges)
        NUDGE_TALLY["value"] += len(result.nudges)
    NUDGE_TALLY["responses"] += 1


def test_steering_happened_in_values() -> None:
    """The properties above are not vacuous: their nudges landed in values (run after them, same module)."""
    if NUDGE_TALLY["responses"] < 100:
        pytest.skip("run with the property tests above")
    print(f"\nconstrained responses: {NUDGE_TALLY['responses']}, nudges in values: {NUDGE_TALLY['value']}")
    assert NUDGE_TALLY["value"] > 0


# ---------------------------------------------------------------------------------------------- plain cases
def test_auto_tool_choice_allows_plain_text_and_steers_it() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    constraint = Constraint.for_tools(tools, "auto")
    result = decoder().generate("hi", constraint=constraint, max_new_tokens=40)[0]
    assert not result.text.startswith(("{", "<"))
    assert result.nudges and all(n.landed_in == "text" for n in result.nudges)


def test_steer_structure_lets_nudges_land_on_syntax() -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "e": {"enum": ["a", "b"]}},
        "required": ["n", "e"],
    }
    constraint = Constraint.json_schema(schema)
    safe = decoder().generate("hi", constraint=constraint, max_new_tokens=30)[0]
    free = decoder().generate("hi", constraint=constraint, max_new_tokens=30, steer_structure=True)[0]
    assert safe.nudges == []  # no free-text value: nothing to steer
    assert free.nudges  # the same grammar with structure steering on: nudges on syntax happen
    assert {n.landed_in for n in free.nudges} == {"syntax"}  # and the events say so
    for result in (safe, free):
        jsonschema.validate(json.loads(result.text), schema)


def test_json_object_mode() -> None:
    result = decoder().generate("hi", constraint=Constraint.json_object(), max_new_tokens=50)[0]
    assert isinstance(json.loads(result.text), dict)


def test_unconstrained_decoding_is_unchanged_by_the_option() -> None:
    a = decoder().generate("hello", max_new_tokens=30)[0]
    b = decoder().generate("hello", max_new_tokens=30, steer_structure=True)[0]
    assert a.token_ids == b.token_ids and all(n.landed_in == "text" for n in a.nudges)


def test_scanner_tracks_paths_and_roles() -> None:
    scanner = JsonScanner().feed('{"a":[1,{"b":"x')
    assert scanner.in_string and scanner.string_role == "value" and scanner.path() == ["a", 1, "b"]
    assert JsonScanner().feed('{"a":"x\\"').in_string  # an escaped quote does not close the string
    assert JsonScanner().feed('{"ke').string_role == "key"


# ---------------------------------------------------------------------------------------------- bad input
ONE_TOOL = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Constraint.json_schema({"type": "strin"}), "schema: not a valid JSON schema"),
        (lambda: Constraint.json_schema("not a schema"), "schema: expected a JSON schema"),  # type: ignore[arg-type]
        (lambda: Constraint.json_schema({"type": "string", "pattern": "^(?=a)a$"}), "schema: the grammar engine"),
        (
            lambda: Constraint.json_schema(
                {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(5000)}}
            ),
            "schema: 1",
        ),
        (lambda: Constraint.lark("start: ("), "grammar: the grammar engine"),
        (
            lambda: Constraint.for_tools(ONE_TOOL, "b"),
            "tool_choice: no tool named 'b'",
        ),
        (
            lambda: Constraint.for_tools(ONE_TOOL, "auto", "xml"),  # type: ignore[arg-type]
            "tool_format: expected",
        ),
    ],
)
def test_bad_constraints_name_what_is_wrong(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_a_budget_too_small_for_the_schema_is_refused_before_decoding() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    with pytest.raises(ValueError, match=r"max_new_tokens: 5 tokens cannot hold .* 11 tokens"):
        decoder().generate("hi", constraint=Constraint.json_schema(schema), max_new_tokens=5)


def test_constraint_with_retokenising_is_refused() -> None:
    with pytest.raises(ValueError, match="retokenize_between_segments"):
        decoder().generate("hi", constraint=Constraint.json_object(), retokenize_between_segments=True)


def test_tool_choice_none_is_no_constraint() -> None:
    assert Constraint.for_tools(ONE_TOOL, "none") is None


def test_objects_without_a_word_on_other_keys_are_closed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"x": {"type": "integer"}}},  # a property so named
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
            "extra": {"type": "object", "additionalProperties": True, "properties": {}},
            "either": {"anyOf": [{"type": "object", "properties": {}}, {"type": "null"}]},
            "default": {"type": "object", "default": {"properties": {}}},
        },
        "$defs": {"Tag": {"type": "object", "properties": {"name": {"type": "string"}}}},
    }
    closed = _closed(schema)
    assert closed["additionalProperties"] is False and "additionalProperties" not in schema  # a copy
    props = closed["properties"]
    assert set(props) == set(schema["properties"])
    assert props["properties"]["additionalProperties"] is False
    assert props["extra"]["additionalProperties"] is True
    assert props["either"]["anyOf"][0]["additionalProperties"] is False
    assert props["default"] == schema["properties"]["default"]  # no properties listed: left as it is
    assert closed["$defs"]["Tag"]["additionalProperties"] is False
