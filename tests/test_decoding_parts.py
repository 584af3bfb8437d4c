"""The decoder's parts on their own: prompt checks, stop sequences and the streamed-text hold-back, and the
generic scheduler (any coroutines, any events, any results)."""

from __future__ import annotations

from collections.abc import Callable, Generator

import pytest
import torch

import ggro.scheduler as scheduler_module
from ggro._batch import FeedRequest, GradientFeed, PolicyBatch, Rollback
from ggro.detokenize import Detokenizer, StreamedText, stop_prefix_length, streamable_text
from ggro.prompting import as_batch, check_prompt_length, encode_prompt, prompt_text
from ggro.scheduler import Outbox, PassCount, run_batched
from ggro.testing import tiny_policy, tiny_tokenizer

TOKENIZER = tiny_tokenizer()


# ---------------------------------------------------------------------------------------------- stop sequences
@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("Hello", ["STOP"], 0),
        ("Hello S", ["STOP"], 1),
        ("Hello STO", ["STOP"], 3),
        ("Hello STOP", ["STOP"], 0),  # a whole stop is cut by response_text, not held back
        ("ab", ["bc", "abc"], 2),  # the longest beginning of any stop wins
        ("", ["STOP"], 0),
    ],
)
def test_stop_prefix_length(text: str, stops: list[str], expected: int) -> None:
    assert stop_prefix_length(text, stops) == expected


def test_streamable_text_holds_back_a_split_character_and_a_stop_beginning() -> None:
    assert streamable_text("caf\ufffd", []) == "caf"
    assert streamable_text("Hi ST", ["STOP"]) == "Hi "
    assert streamable_text("Hi \ufffd\ufffd", ["STOP"]) == "Hi "


def test_streamed_deltas_add_up_to_the_final_text() -> None:
    stops = ["STOP"]
    streamed = StreamedText()
    seen = ["Hel", "Hello caf\ufffd", "Hello café ST", "Hello café STAR"]
    deltas = [streamed.advance(text, stops, final=False) for text in seen]
    deltas.append(streamed.advance("Hello café STARS", stops, final=True))
    assert deltas == ["Hel", "lo caf", "é ", "STAR", "S"]
    assert "".join(deltas) == streamed.text == "Hello café STARS"


def test_detokenizer_cuts_text_and_ids_at_the_first_stop() -> None:
    text = Detokenizer(TOKENIZER)
    ids = TOKENIZER("one END two", add_special_tokens=False)["input_ids"]
    assert text.hits_stop(ids, ["END"]) and not text.hits_stop(ids, ["three"])
    cut = text.response_text(ids, ["two", "END"])
    assert cut == "one "
    assert text.decode(text.cut_ids_at_stop(ids, cut)) == "one "
    assert text.retokenize(ids) == ids


# ---------------------------------------------------------------------------------------------- prompts
def test_prompts_encode_with_and_without_the_chat_template() -> None:
    templated = encode_prompt(TOKENIZER, "Hi")
    assert TOKENIZER.decode(templated) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    chat = encode_prompt(TOKENIZER, [{"role": "user", "content": "Hi"}])
    assert chat == templated
    assert TOKENIZER.decode(encode_prompt(TOKENIZER, "Hi", chat_template=False)) == "Hi"


@pytest.mark.parametrize(
    ("prompt", "error", "message"),
    [
        ("  ", ValueError, "prompt: must be a non-empty string"),
        ("bad \ud800", ValueError, "prompt: not valid Unicode text (a lone surrogate at index 4)"),
        ([], ValueError, "prompt: the message list is empty"),
        (["Hi"], TypeError, "prompt: message 0 must be a dict"),
        ([{"role": "user"}], TypeError, "prompt: message 0 needs string 'role' and 'content' fields"),
        ([{"role": "user", "content": "a\udc00"}], ValueError, "prompt: message 0 content: not valid Unicode"),
        ([{"role": "user", "content": " "}], ValueError, "prompt: every message is empty"),
    ],
)
def test_bad_prompts_say_what_is_wrong(prompt: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        encode_prompt(TOKENIZER, prompt)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


def test_chat_messages_need_a_chat_template() -> None:
    plain = tiny_tokenizer()
    plain.chat_template = None
    with pytest.raises(ValueError, match="need a tokenizer with a chat template"):
        encode_prompt(plain, [{"role": "user", "content": "Hi"}])


def test_a_prompt_must_leave_room_for_the_response() -> None:
    assert check_prompt_length([1, 2], 3) == [1, 2]
    assert check_prompt_length([1, 2, 3], None) == [1, 2, 3]
    with pytest.raises(ValueError, match="prompt: 3 tokens do not fit the model's context window of 3 tokens"):
        check_prompt_length([1, 2, 3], 3)
    with pytest.raises(ValueError, match="tokenises to no tokens"):
        check_prompt_length([], 3)


def test_batches_and_prompt_texts() -> None:
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert as_batch("Hi") == ["Hi"]
    assert as_batch(chat) == [chat]  # one conversation
    assert as_batch(["a", chat]) == ["a", chat]
    with pytest.raises(TypeError, match="prompts: expected a string"):
        as_batch(b"Hi")
    with pytest.raises(TypeError, match=r"prompts\[1\]: expected a string or a list of chat messages"):
        as_batch(["a", 3])
    assert prompt_text("Hi") == "Hi"
    assert prompt_text(chat) == "Hi"
    assert prompt_text([{"role": "system", "content": "only"}]) == "only"


# ---------------------------------------------------------------------------------------------- the scheduler
_Coroutine = Generator[FeedRequest | Rollback | GradientFeed, torch.Tensor | None, list[float]]


def _feeder(name: str, chunks: list[list[int] | int | str], emit: Callable[[str], None]) -> _Coroutine:
    """Feeds each list of tokens, rolls back to each int, asks for a gradient (of the next token after its first
    two) at each string; emits a string per pass, returns each pass's last logit of token 0."""
    seen: list[float] = []
    for chunk in chunks:
        if isinstance(chunk, int):
            yield Rollback(chunk)
            continue
        if isinstance(chunk, str):
            request = GradientFeed(2, [4], lambda states: states.sum(-1)[:1])
            yield request
            assert request.gradients is not None
            continue
        out = yield FeedRequest(chunk)
        assert out is not None
        seen.append(float(out[-1, 0]))
        emit(f"{name}:{len(seen)}")
    return seen


def test_the_scheduler_batches_any_coroutines_and_passes_their_events_through() -> None:
    model = tiny_policy(TOKENIZER)
    heard: list[str] = []
    outbox: Outbox[str] = Outbox(heard.append)
    counts = [PassCount(), PassCount()]
    plans: list[list[list[int] | int]] = [[[5, 6, 7], 2, [8]], [[9, 10], [11, 12, 13], [14]]]
    run = run_batched(model, [_feeder(n, p, outbox.put) for n, p in zip("ab", plans, strict=True)], counts, outbox)
    events: list[str] = []
    try:
        while True:
            events.append(next(run))
    except StopIteration as stop:
        results = stop.value
    assert events == heard == ["a:1", "b:1", "a:2", "b:2", "b:3"]
    assert [c.forward_passes for c in counts] == [2, 3]
    assert [c.tokens_processed for c in counts] == [4, 6]
    with torch.no_grad():  # a rolled-back row reads as if the dropped tokens were never fed
        direct = [
            model(input_ids=torch.tensor([ids])).logits[0, -1, 0].item() for ids in ([5, 6, 8], [9, 10, 11, 12, 13, 14])
        ]
    assert results[0][-1] == pytest.approx(direct[0], abs=1e-4)
    assert results[1][-1] == pytest.approx(direct[1], abs=1e-4)


def test_closing_the_scheduler_closes_every_sequence() -> None:
    closed: list[str] = []

    def endless(name: str) -> _Coroutine:
        try:
            while True:
                yield FeedRequest([5])
                outbox.put(name)
        finally:
            closed.append(name)

    outbox: Outbox[str] = Outbox()
    run = run_batched(tiny_policy(TOKENIZER), [endless("a"), endless("b")], [PassCount(), PassCount()], outbox)
    assert next(run) == "a"
    run.close()
    assert sorted(closed) == ["a", "b"]


def _passes(plans: list[list[list[int] | int | str]]) -> list[str]:
    """The passes the scheduler runs for ``plans`` (see :func:`_feeder`): "F" feeds, "G" gradients, each followed by
    the sequences it serves."""
    passes: list[str] = []

    class Recorder(PolicyBatch):
        def step(self, requests: dict[int, FeedRequest]) -> dict[int, torch.Tensor]:
            passes.append("F" + "".join(str(i) for i in sorted(requests)))
            return super().step(requests)

        def gradient_pass(self, requests: dict[int, GradientFeed]) -> None:
            passes.append("G" + "".join(str(i) for i in sorted(requests)))
            super().gradient_pass(requests)

    outbox: Outbox[str] = Outbox()
    sequences = [_feeder(str(n), p, outbox.put) for n, p in enumerate(plans)]
    saved = scheduler_module.PolicyBatch
    scheduler_module.PolicyBatch = Recorder  # type: ignore[misc]
    try:
        for _ in run_batched(tiny_policy(TOKENIZER), sequences, [PassCount() for _ in plans], outbox):
            pass
    finally:
        scheduler_module.PolicyBatch = saved  # type: ignore[misc]
    return passes


def test_a_gradient_request_waits_a_few_passes_for_company_then_goes_alone() -> None:
    """A gradient pass holds every other sequence up: a lone request lets GRADIENT_WAIT_PASSES feed passes go by
    first; with nothing else to feed it goes at once."""
    wait = scheduler_module.GRADIENT_WAIT_PASSES
    passes = _passes([[[5, 6, 7], "grad", [8]], [[9, 10], *([[11]] * (wait + 2))]])
    assert passes[: wait + 3] == ["F01", *(["F1"] * wait), "G0", "F01"]
    assert _passes([[[5, 6, 7], "grad", [8]]]) == ["F0", "G0", "F0"]


def test_gradient_requests_that_wait_together_share_one_pass() -> None:
    assert scheduler_module.GRADIENT_GATHER == 2
    passes = _passes([[[5, 6, 7], [8], "grad", [9]], [[9, 10], "grad", [11]], [[12, 13], *([[14]] * 4)]])
    # Sequence 1 asks first and waits one feed pass; sequence 0's request then makes two: one pass for both.
    assert passes[:4] == ["F012", "F02", "G01", "F012"]
