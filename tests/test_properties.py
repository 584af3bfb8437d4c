"""Property-based tests (hypothesis) of the decoder's input handling, on the tiny in-process models.

Three families of inputs, each generated over wide ranges, valid and invalid alike:

- configuration values, given to ``GGROConfig(...)`` and per call to ``decoder.generate(prompt, **options)``;
- text prompts (empty, blank, beyond the context window, astral/combining/RTL unicode, control chars, NUL);
- chat message lists (odd or missing roles, missing or non-string content, empty, system-only).

Every input must either generate or fail with a clear typed error (``ValueError`` / ``TypeError``, pydantic's
``ValidationError`` included) whose message names the field or the prompt; and after every failing input a
fixed canary call must return exactly what it returned before the run (no poisoned state). The bugs these
tests found (all fixed) are also pinned as single regression cases at the end.
The number of inputs tried is printed in the terminal summary (see ``conftest.py``).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from conftest import PROPERTY_COUNTS
from ggro import GGROConfig, GGRODecoder, GGROResult
from ggro.testing import tiny_decoder

CANARY_PROMPT = "Hello there"
CANARY_OPTIONS: dict[str, Any] = {"max_new_tokens": 6}
CONTEXT_WINDOW = 4096  # the tiny policy's max_position_embeddings; one token per character
TEMPLATE_TOKENS = 19  # the tiny chat template around one user turn, with the generation prompt
HANG_SECONDS = 120.0  # one example takes well under a second; generous for a loaded machine
# The decoder's own defaults: a call that sets no budget stays short.
DECODER_CONFIG = GGROConfig(max_new_tokens=8, refinement_steps=3)
# Names `generate` takes itself; an unknown option must not collide with them.
GENERATE_PARAMETERS = frozenset({"prompts", "config", "listener", "chat_template", "tools", "constraint"})


def examples(n: int) -> settings:
    """Bounded and without a per-example deadline (the first generation warms torch up for seconds).

    The default run (CI, ``make test``) draws the same inputs every time, so a red build is reproducible;
    ``GGRO_PROPERTY_SCALE=10`` searches ten times as many fresh random inputs (a longer local hunt).
    """
    scale = int(os.environ.get("GGRO_PROPERTY_SCALE", "1"))
    return settings(
        max_examples=n * scale,
        derandomize=scale == 1,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


# ----------------------------------------------------------------------------- harness
class Hang(BaseException):
    """Raised by the watchdog inside a call that has not returned in HANG_SECONDS (not an Exception, so no
    broad ``except Exception`` in the code under test can swallow it)."""


class PoisonedStateError(RuntimeError):
    """The canary call no longer returns what it returned before the property run."""


@contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no result after {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def attempt(call: Callable[[], Any]) -> tuple[Any, Exception | None]:
    """(result, None) or (None, the exception); a hang raises."""
    with watchdog():
        try:
            return call(), None
        except Exception as error:
            return None, error


def describe(error: BaseException) -> str:
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def assert_typed_error(error: Exception, names: Iterable[str], what: str) -> None:
    """A ValueError/TypeError (ValidationError included) whose message names one of ``names``."""
    names = list(names)
    assert isinstance(error, ValueError | TypeError), f"{what}: untyped {type(error).__name__}\n{describe(error)}"
    text = str(error)
    named = any(name in text or repr(name)[1:-1] in text for name in names)  # as given or escaped
    assert named, f"{what}: the message names none of {names}:\n{describe(error)}"


def assert_sane(results: list[GGROResult], count: int, max_new_tokens: int, stops: Iterable[str] = ()) -> None:
    assert len(results) == count
    for r in results:
        assert isinstance(r.text, str)
        assert r.finish_reason in ("stop", "length", "stop_sequence")
        assert len(r.token_ids) <= max_new_tokens
        assert not any(s in r.text for s in stops), (r.text, list(stops))  # cut where a stop sequence begins


def count(kind: str, outcome: str, error: Exception | None = None) -> None:
    PROPERTY_COUNTS[kind]["tried"] += 1
    PROPERTY_COUNTS[kind][outcome] += 1
    event(outcome if error is None else f"{type(error).__name__}: {str(error).splitlines()[0][:60]}")


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder(config=DECODER_CONFIG)


@pytest.fixture(scope="module")
def canary(decoder: GGRODecoder) -> Callable[[], None]:
    """Checks that the canary call returns exactly the text it returned before any property example ran."""
    expected = decoder.generate(CANARY_PROMPT, **CANARY_OPTIONS)[0].text
    assert expected

    def check() -> None:
        with watchdog():
            got = decoder.generate(CANARY_PROMPT, **CANARY_OPTIONS)[0].text
        if got != expected:
            raise PoisonedStateError(f"canary call returned {got!r}, before the run {expected!r}")

    return check


# ----------------------------------------------------------------------------- configuration values
# Each option strategy yields (value, valid): True = within the documented type and bounds (must be accepted),
# False = outside them (must be rejected, naming the field), None = pydantic's lax coercion ("4", True, 3.0):
# either outcome, but a rejection still names the field.
Tagged = tuple[Any, bool | None]
NON_NUMBERS = st.sampled_from(["abc", "", "one", "1e", "--1", [], [1], {}, {"value": 1}, b"\xff"])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
HUGE_INTS = st.sampled_from([2**31, 2**63, 2**64, 10**30, -(2**63), -(10**30)])
FRACTIONAL = st.integers(-(2**40), 2**40).map(lambda i: i + 0.5) | st.floats(0, 1, exclude_min=True, exclude_max=True)


def _tag(strategy: st.SearchStrategy[Any], valid: bool | None) -> st.SearchStrategy[Tagged]:
    return strategy.map(lambda value: (value, valid))


def weighted(*choices: tuple[st.SearchStrategy[Any], int]) -> st.SearchStrategy[Any]:
    """Draw from each strategy in proportion to its weight (``one_of`` draws its branches evenly); shrinking
    goes towards the first."""
    return st.sampled_from([s for s, weight in choices for _ in range(weight)]).flatmap(lambda s: s)


def _mix(valid: Any, invalid: Any, lax: Any | None = None) -> Any:
    """Valid values four times as often as invalid ones (so that option sets often generate), lax rarely."""
    choices = [(_tag(valid, True), 8), (_tag(invalid, False), 2)]
    if lax is not None:
        choices.append((_tag(lax, None), 1))
    return weighted(*choices)


def int_option(lo: int, hi: int | None, *, optional: bool = False, valid_hi: int | None = None) -> Any:
    """``valid_hi`` narrows the valid values generated (a token budget stays small); rejection is still
    checked up to the documented bound."""
    top = valid_hi if valid_hi is not None else hi
    valid = st.integers(lo, top) if top is not None else st.integers(min_value=lo)
    invalid = [
        st.integers(max_value=lo - 1),
        HUGE_INTS.filter(lambda v: v < lo or (hi is not None and v > hi)),
        NON_FINITE,
        FRACTIONAL,
        NON_NUMBERS,
    ]
    if hi is not None:
        invalid.append(st.integers(min_value=hi + 1))
    if optional:
        valid = valid | st.none()
    else:
        invalid.append(st.none())
    lax = st.sampled_from([True, False, "4", " 7 ", 3.0, 0.0, "-1"])
    return _mix(valid, st.one_of(invalid), lax)


def float_option(lo: float, hi: float, *, exclude_lo: bool = False) -> Any:
    valid = st.floats(lo, hi, exclude_min=exclude_lo)
    invalid = st.one_of(
        st.floats(max_value=lo, exclude_max=not exclude_lo, allow_nan=False),
        st.floats(min_value=hi, exclude_min=True, allow_nan=False),
        NON_FINITE,
        NON_NUMBERS,
        st.none(),
    )
    lax = st.sampled_from([True, "1e-4", " 0.5 ", 1])
    return _mix(valid, invalid, lax)


def timeout_option(for_generation: bool) -> Any:
    """Seconds > 0 up to a day, or None. For generation the valid values stay >= 30 s: a smaller limit is valid
    but may fail the call with a RewardTimeoutError by design (tests/test_reward_failures.py covers that)."""
    valid = st.floats(30.0 if for_generation else 0.0, 86400.0, exclude_min=not for_generation) | st.none()
    invalid = st.one_of(
        st.floats(max_value=0.0, allow_nan=False),
        st.floats(min_value=86400.0, exclude_min=True, allow_nan=False),
        NON_FINITE,
        NON_NUMBERS,
    )
    return _mix(valid, invalid)


def bool_option() -> Any:
    invalid = st.sampled_from(["maybe", 2, -1, 0.5, None, [], {}, "2", "truthy"])
    lax = st.sampled_from([0, 1, "yes", "no", "true", "off", "1", 1.0])
    return _mix(st.booleans(), invalid, lax)


def literal_option(*allowed: str) -> Any:
    invalid = st.one_of(
        st.text(max_size=12).filter(lambda s: s not in allowed),
        st.sampled_from([None, 0, 1.5, [allowed[0]], allowed[0].upper(), f" {allowed[0]}"]),
    )
    return _mix(st.sampled_from(allowed), invalid)


STOP_TEXT = st.one_of(
    st.sampled_from(list("aeiou ;.!XQ9")),  # single characters the tiny policy does produce: stops fire
    st.text(min_size=1, max_size=12),
    st.text(st.characters(categories=["Cs", "So", "Mn"]), min_size=1, max_size=4),  # lone surrogates, emoji, marks
)


def stops_option() -> Any:
    valid = st.lists(STOP_TEXT, max_size=3)
    invalid = st.one_of(
        st.lists(STOP_TEXT, max_size=2).flatmap(lambda xs: st.permutations([*xs, ""])),  # an empty stop
        st.text(min_size=1, max_size=8),  # a bare string, not a list
        st.sampled_from([None, [1], [None], ["a", 2.5], {"a": 1}, 7]),
    )
    lax = st.sampled_from([("a",), ("x", "y")])
    return _mix(valid, invalid, lax)


def option_strategies(for_generation: bool) -> dict[str, Any]:
    """One strategy per GGROConfig option. For generation the valid token budget stays 1..8 (fast examples)."""
    return {
        "entropy_threshold": float_option(0.0, 20.0),
        "min_segment_tokens": int_option(2, 4096),
        "first_insertion_offset": int_option(0, 4096),
        "refinement_steps": int_option(1, 64),
        "nudge_top_k": int_option(1, 1024),
        "nudge_temperature": float_option(0.0, 100.0, exclude_lo=True),
        "nudge_selection": literal_option("greedy", "sample"),
        "nudge_score_baseline": literal_option("current", "zero"),
        "max_new_tokens": int_option(1, 131072, valid_hi=8 if for_generation else None),
        "seed": int_option(0, 2**64 - 1, optional=True),
        "max_nudges": int_option(0, None, optional=True),
        "speculative_refinement": bool_option(),
        "retokenize_between_segments": bool_option(),
        "final_reward_before_eos": bool_option(),
        "entropy_probability_floor": float_option(0.0, 1e-3),
        "stop_sequences": stops_option(),
        "nonfinite_reward": literal_option("skip", "raise"),
        "reward_failure": literal_option("raise", "fallback"),
        "reward_timeout": timeout_option(for_generation),
    }


UNKNOWN_KEYS = st.one_of(
    st.sampled_from(["entropy_treshold", "beam_width", "temperature", "max_tokens", "stop", "Seed", "top_p"]),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=10),
).filter(lambda k: k not in GGROConfig.model_fields and k not in GENERATE_PARAMETERS and k.strip() == k and k != "")


@st.composite
def tagged_options(draw: st.DrawFn, for_generation: bool) -> dict[str, Tagged]:
    strategies = option_strategies(for_generation)
    names = draw(st.lists(st.sampled_from(sorted(strategies)), max_size=4, unique=True))
    options: dict[str, Tagged] = {name: draw(strategies[name]) for name in names}
    if draw(st.sampled_from([False] * 9 + [True])):  # one in ten: an unknown option too
        options[draw(UNKNOWN_KEYS)] = (draw(st.integers() | st.text(max_size=5) | st.none()), False)
    return options


def expected_outcome(options: dict[str, Tagged]) -> tuple[str, set[str], set[str]]:
    """(kind, keys the error must name one of, keys an error may be about). kind: 'unknown' (an unknown
    option: must fail naming it), 'invalid' (must fail), 'either' (lax coercion only) or 'valid' (must pass)."""
    unknown = {k for k in options if k not in GGROConfig.model_fields}
    not_valid = unknown | {k for k, (_, valid) in options.items() if valid is not True}
    if unknown:
        return "unknown", unknown, not_valid
    if any(valid is False for _, valid in options.values()):
        return "invalid", not_valid, not_valid
    if not_valid:
        return "either", not_valid, not_valid
    return "valid", set(), set()


def check_config_error(error: Exception, kind: str, names: set[str], not_valid: set[str], what: str) -> None:
    assert kind != "valid", f"{what}: valid options rejected\n{describe(error)}"
    assert_typed_error(error, names, what)
    if isinstance(error, ValidationError):  # every complaint is about an option that was not valid
        for item in error.errors():
            if item["loc"]:
                assert str(item["loc"][0]) in not_valid, (item, not_valid)


@examples(500)
@given(options=tagged_options(for_generation=False))
def test_config_accepts_exactly_the_documented_values(options: dict[str, Tagged]) -> None:
    values = {k: v for k, (v, _) in options.items()}
    kind, names, not_valid = expected_outcome(options)
    note(f"expected: {kind} {sorted(names)}")
    config, error = attempt(lambda: GGROConfig(**values))
    count("config", "rejected" if error else "accepted", error)
    if error is None:
        assert kind in ("valid", "either"), f"invalid options accepted: {values!r} -> {config!r}"
        # What was accepted survives a round trip through its dump.
        assert GGROConfig.model_validate(config.model_dump()) == config
    else:
        check_config_error(error, kind, names, not_valid, f"GGROConfig(**{values!r})")


@examples(100)
@given(options=tagged_options(for_generation=True))
def test_per_call_options_generate_or_name_the_field(
    decoder: GGRODecoder, canary: Callable[[], None], options: dict[str, Tagged]
) -> None:
    values = {k: v for k, (v, _) in options.items()}
    kind, names, not_valid = expected_outcome(options)
    note(f"expected: {kind} {sorted(names)}")
    results, error = attempt(lambda: decoder.generate(CANARY_PROMPT, **values))
    count("config_per_call", "typed_error" if error else "generated", error)
    if error is None:
        assert kind in ("valid", "either"), f"invalid options accepted: {values!r}"
        cfg = GGROConfig.model_validate({**DECODER_CONFIG.model_dump(), **values})
        assert_sane(results, 1, cfg.max_new_tokens, cfg.stop_sequences)
    else:
        check_config_error(error, kind, names, not_valid, f"generate(**{values!r})")
        canary()


# ----------------------------------------------------------------------------- prompts
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2009\u2028\u2029\u202f\u205f\u3000"
ASTRAL = ["😀", "👍🏽", "👨‍👩‍👧", "🇺🇳", "\U0001f9ea", "\U00010348", "\U0002a6d6", "\U000e0041"]
COMBINING = ["e\u0301", "a\u0300\u0316\u0358", "\u0301", "Z\u0351\u036b\u0343\u036a\u0489", "\u20dd"]
RTL = ["שלום", "مرحبا", "\u202eabc\u202c", "\u200f", "\u2067x\u2069", "a\u200db", "\u061c"]
CONTROL = ["\x00", "\x01", "\x07", "\x08", "\x1b[31m", "\x7f", "\u200b", "\ufeff", "\ufffd", "\uffff"]
WORDS = ["Hello", "there", "?", "How do I", "<|im_end|>", "<|im_start|>", "{{ x }}", "%s", "\\n", "'"]
# Any character, lone surrogates included (they must be refused with an error that names the prompt).
ANY_CHARACTER = st.characters()


def has_lone_surrogate(text: str) -> bool:
    """True when ``text`` cannot be encoded as UTF-8 (the tokenizer cannot take it)."""
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


PROMPTS = st.one_of(
    st.just(""),
    st.text(st.sampled_from(WHITESPACE), max_size=12),
    st.text(ANY_CHARACTER, min_size=1, max_size=40),
    st.lists(st.sampled_from(ASTRAL + COMBINING + RTL + CONTROL + WORDS), min_size=1, max_size=10).map("".join),
    # Beyond the context window (one token per character; 4077 characters and the template are 4096 tokens).
    st.tuples(st.sampled_from(["a", "ab ", "😀", "\x00", "e\u0301"]), st.integers(4077, 4200) | st.just(100_000)).map(
        lambda t: (t[0] * t[1])[: t[1]]
    ),
)


@examples(100)
@given(prompt=PROMPTS)
def test_prompts_generate_or_name_the_prompt(decoder: GGRODecoder, canary: Callable[[], None], prompt: str) -> None:
    results, error = attempt(lambda: decoder.generate(prompt, max_new_tokens=4))
    count("prompts", "typed_error" if error else "generated", error)
    blank = not prompt.strip()
    lone_surrogate = has_lone_surrogate(prompt)
    beyond_window = len(prompt) + TEMPLATE_TOKENS >= CONTEXT_WINDOW and "<|" not in prompt
    fits = len(prompt) + TEMPLATE_TOKENS < CONTEXT_WINDOW
    if error is None:
        must_refuse = blank or beyond_window or lone_surrogate
        assert not must_refuse, f"accepted a prompt it must refuse: {prompt[:80]!r}"
        assert_sane(results, 1, 4)
        return
    assert_typed_error(error, ["prompt"], f"generate({prompt[:80]!r}...)")
    if lone_surrogate and not blank:
        assert "not valid Unicode text" in str(error), describe(error)
    else:
        assert not fits or blank, f"refused a prompt that fits:\n{describe(error)}"
    if beyond_window and not blank:
        assert isinstance(error, ValueError) and "context window of 4096" in str(error), describe(error)
    canary()


def test_prompt_at_the_context_window_edge(decoder: GGRODecoder, canary: Callable[[], None]) -> None:
    """The longest prompt that fits leaves one token for the response; one character more is refused."""
    edge = CONTEXT_WINDOW - TEMPLATE_TOKENS - 1
    (result,) = decoder.generate("a" * edge, max_new_tokens=4)
    assert len(result.prompt_token_ids) == CONTEXT_WINDOW - 1 and len(result.token_ids) == 1
    with pytest.raises(ValueError, match="prompt: 4096 tokens do not fit the model's context window of 4096"):
        decoder.generate("a" * (edge + 1), max_new_tokens=4)
    canary()


# ----------------------------------------------------------------------------- chat message lists
KNOWN_ROLES = ["system", "user", "assistant", "tool"]
ROLES = weighted(
    (st.sampled_from(KNOWN_ROLES), 8),
    (st.sampled_from(["", "USER", " user", "wizard", "developer", "function", "human", "ai", "<|im_end|>"]), 2),
    (st.text(ANY_CHARACTER, max_size=12), 1),
    (st.sampled_from([None, 1, ["user"], {"role": "user"}]), 1),  # not a string
)
CONTENTS = weighted(
    (st.text(ANY_CHARACTER, max_size=30), 6),
    (st.sampled_from(["", "   ", "\n\t", "Hi", *ASTRAL, *RTL, *CONTROL, *WORDS]), 3),
    (st.sampled_from([None, 3, 2.5, True, b"hi", ["hi"], [{"type": "text", "text": "hi"}], {"text": "hi"}]), 1),
)
_MISSING = object()


@st.composite
def chat_message(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(range(30)))
    if shape == 0:  # not a message dict at all (a list holding one is a batch of prompts)
        return draw(st.sampled_from(["Hi", "", None, 5, 2.5]))
    message: dict[str, Any] = {}
    role = draw(ROLES) if shape != 1 else _MISSING
    content = draw(CONTENTS) if shape != 2 else _MISSING
    if role is not _MISSING:
        message["role"] = role
    if content is not _MISSING:
        message["content"] = content
    if shape == 3:
        message["name"] = "bob"
    return message


CONVERSATIONS = st.one_of(
    st.lists(chat_message(), max_size=5),
    st.lists(st.builds(lambda c: {"role": "system", "content": c}, CONTENTS), min_size=1, max_size=3),  # system only
)


def chat_expectation(conversation: list[Any]) -> str:
    """'error' (must fail, naming the prompt), 'generate' (must generate) or 'either'."""
    if not conversation:
        return "error"
    if not all(isinstance(m, dict) for m in conversation):
        return "either"  # a list of prompts; a message dict among them is refused
    if any(not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str) for m in conversation):
        return "error"
    if not any(m["content"].strip() for m in conversation):
        return "error"
    if any(has_lone_surrogate(m["role"]) or has_lone_surrogate(m["content"]) for m in conversation):
        return "error"
    if all(m["role"] in KNOWN_ROLES for m in conversation):
        return "generate"
    return "either"  # an unknown role may be refused (naming it) or rendered by the template


@examples(100)
@given(conversation=CONVERSATIONS)
def test_chat_messages_generate_or_name_the_problem(
    decoder: GGRODecoder, canary: Callable[[], None], conversation: list[Any]
) -> None:
    expectation = chat_expectation(conversation)
    note(f"expected: {expectation}")
    results, error = attempt(lambda: decoder.generate(conversation, max_new_tokens=4))
    count("chat", "typed_error" if error else "generated", error)
    if error is None:
        assert expectation != "error", f"accepted a conversation it must refuse: {conversation!r}"
        prompts = 1 if all(isinstance(m, dict) for m in conversation) else len(conversation)
        assert_sane(results, prompts, 4)
        return
    assert expectation != "generate", f"refused a valid conversation {conversation!r}:\n{describe(error)}"
    roles = [str(m.get("role")) for m in conversation if isinstance(m, dict) and m.get("role")]
    assert_typed_error(error, ["prompt", "messages", *roles], f"generate({conversation!r})")
    canary()


# ------------------------------------------------------------------ bugs these tests found, fixed: one case each
def _must_generate_or_name(names: list[str]) -> Callable[[Any, Exception | None], None]:
    def check(results: Any, error: Exception | None) -> None:
        if error is not None:
            assert_typed_error(error, names, "call")

    return check


def _must_generate(results: Any, error: Exception | None) -> None:
    assert error is None, f"valid input refused:\n{describe(error)}"


FIXED_BUGS = [
    pytest.param(
        (CANARY_PROMPT,),
        {"min_segment_tokens": 1, "max_new_tokens": 2},
        _must_generate_or_name(["min_segment_tokens"]),
        id="min_segment_tokens=1",
    ),
    pytest.param(
        (CANARY_PROMPT,),
        {"nudge_selection": "sample", "nudge_temperature": 1e-45, "max_new_tokens": 4},
        _must_generate,
        id="sample-tiny-temperature",
    ),
    pytest.param(
        (CANARY_PROMPT,),
        {"seed": 2**64, "max_new_tokens": 4},
        _must_generate_or_name(["seed"]),
        id="seed-2**64",
    ),
    pytest.param(
        ("a\ud800b",),
        {"max_new_tokens": 4},
        _must_generate_or_name(["prompt"]),
        id="lone-surrogate",
    ),
    pytest.param(
        ([[1, 2]],),
        {"max_new_tokens": 4},
        _must_generate_or_name(["prompt"]),
        id="conversation-of-non-dicts",
    ),
    pytest.param((None,), {"max_new_tokens": 4}, _must_generate_or_name(["prompts"]), id="prompts-None"),
    pytest.param(
        ({"role": "user", "content": "hi"},),
        {"max_new_tokens": 4},
        _must_generate_or_name(["prompts"]),
        id="a-bare-message-not-in-a-list",
    ),
    pytest.param((iter(["Hi", "Hello"]),), {"max_new_tokens": 4}, _must_generate, id="an-iterator-of-prompts"),
    pytest.param(
        (CANARY_PROMPT,),
        {"config": {"max_new_tokens": 3}},
        _must_generate_or_name(["config"]),
        id="config-as-dict",
    ),
    pytest.param(
        (CANARY_PROMPT,),
        {"listener": 5, "max_new_tokens": 4},
        _must_generate_or_name(["listener"]),
        id="listener-not-callable",
    ),
]


@pytest.mark.parametrize(("args", "kwargs", "expect"), FIXED_BUGS)
def test_fixed_bug(
    decoder: GGRODecoder,
    canary: Callable[[], None],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    expect: Callable[[Any, Exception | None], None],
) -> None:
    results, error = attempt(lambda: decoder.generate(*args, **kwargs))
    canary()
    expect(results, error)
