"""Bad input and failing rewards: clear, typed errors, and the next call (and its handlers) still work."""

from __future__ import annotations

import asyncio

import pytest
from ggro import CallableReward, GGRODecoder, RewardError
from ggro.testing import tiny_policy, tiny_tokenizer
from langchain_core.messages import HumanMessage
from pydantic import ValidationError

from langchain_ggro import GGROLLM, ChatGGRO, GGRONudgeCollector
from tests.recorder import RunRecorder


@pytest.fixture(scope="module")
def flaky_decoder() -> GGRODecoder:
    """Tiny policy; a reward that fails for any prompt containing 'boom' (a scorer API erroring mid-batch)."""

    def score(prompts: list[str], responses: list[str]) -> list[float]:
        if any("boom" in p for p in prompts):
            raise ConnectionError("scorer unavailable")
        return [float(len(set(r))) for r in responses]

    tokenizer = tiny_tokenizer()
    return GGRODecoder(tiny_policy(tokenizer), tokenizer, CallableReward(score, name="flaky-scorer"))


@pytest.mark.parametrize("cls", [GGROLLM, ChatGGRO])
def test_empty_prompts_are_refused(cls: type[GGROLLM] | type[ChatGGRO], flaky_decoder: GGRODecoder) -> None:
    model = cls.from_decoder(flaky_decoder, max_tokens=8)
    for prompt in ("", "   \n"):
        with pytest.raises(ValueError, match=r"prompt: must be a non-empty string|prompt: every message is empty"):
            model.invoke(prompt)


def test_non_string_content_is_refused(flaky_decoder: GGRODecoder) -> None:
    llm = GGROLLM.from_decoder(flaky_decoder, max_tokens=8)
    chat = ChatGGRO.from_decoder(flaky_decoder, max_tokens=8)
    with pytest.raises(ValueError, match="Invalid input type"):
        llm.invoke(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text content only"):
        chat.invoke([HumanMessage(content=[{"type": "image", "url": "https://example.com/a.png"}])])
    with pytest.raises(TypeError, match="content must be a string or text blocks"):
        chat.invoke([HumanMessage.model_construct(content=3.5)])


def test_unknown_and_invalid_arguments_name_the_field(flaky_decoder: GGRODecoder) -> None:
    llm = GGROLLM.from_decoder(flaky_decoder, max_tokens=8)
    with pytest.raises(TypeError, match=r"unknown option 'beam_width'; allowed per call: \[.*'entropy_threshold'"):
        llm.invoke("Hi", beam_width=4)
    with pytest.raises(ValueError, match="refinement_steps"):
        llm.invoke("Hi", refinement_steps=0)
    with pytest.raises(ValidationError, match="beam_width"):
        GGROLLM(beam_width=4)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="max_retries"):
        ChatGGRO(max_retries=2)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="entropy_threshold"):
        ChatGGRO(entropy_threshold=-1.0)
    with pytest.raises(ValidationError, match="temperature: GGRO decodes greedily"):
        ChatGGRO(temperature=0.7)
    with pytest.raises(ValidationError, match="max_new_tokens: given twice"):
        ChatGGRO(max_tokens=8, max_new_tokens=9)
    with pytest.raises(ValidationError, match="stop sequence must be a non-empty string"):
        GGROLLM(stop=[""])
    assert ChatGGRO(model="some/model", stop=None).stop_sequences == []


def test_a_reward_failure_mid_batch_fails_that_call_and_the_next_call_works(flaky_decoder: GGRODecoder) -> None:
    llm = GGROLLM.from_decoder(flaky_decoder, max_tokens=16, refinement_steps=3)
    recorder, collector = RunRecorder(), GGRONudgeCollector()
    config = {"callbacks": [recorder, collector]}
    with pytest.raises(RewardError, match="reward 'flaky-scorer' failed: scorer unavailable"):
        llm.batch(["Hello", "boom goes the scorer", "Hi"], config=config)
    assert len(recorder.errors) == 3 and not recorder.result_nudges  # every run of the batch was told

    recorder_after = RunRecorder()
    texts = llm.batch(["Hello", "Hi"], config={"callbacks": [recorder_after, collector]})
    assert texts == [r.text for r in flaky_decoder.generate(["Hello", "Hi"], max_new_tokens=16, refinement_steps=3)]
    recorder_after.assert_events_match_results(runs=2)
    nudges_after = sum(len(v) for v in recorder_after.nudge_events.values())
    assert len(collector.events) >= nudges_after  # the collector kept working (it also saw the failed call's)


def test_a_reward_failure_in_one_async_chat_call_leaves_the_others_intact(flaky_decoder: GGRODecoder) -> None:
    chat = ChatGGRO.from_decoder(flaky_decoder, max_tokens=16, refinement_steps=3)
    recorder = RunRecorder()

    async def run() -> list[object]:
        return await chat.abatch(["Hello", "boom", "Hi"], config={"callbacks": [recorder]}, return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[1], RewardError)
    assert [getattr(r, "content", None) for r in (results[0], results[2])] == [
        chat.invoke("Hello").content,
        chat.invoke("Hi").content,
    ]
    recorder.assert_events_match_results(runs=2)
    assert len(recorder.errors) == 1
