"""Async decoding, streamed text with stop sequences, the process-shared decoder and `ggro.testing`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ggro import GGRODecoder
from ggro.adapters import shared_decoder
from ggro.testing import save_tiny_models, tiny_decoder

OPTIONS = {"max_new_tokens": 48, "refinement_steps": 3}


@pytest.fixture(scope="module")
def decoder() -> GGRODecoder:
    return tiny_decoder()


def test_tiny_decoder_chats_and_nudges(decoder: GGRODecoder) -> None:
    result = decoder.generate(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], **OPTIONS
    )
    assert len(result) == 1 and result[0].text and result[0].usage.completion_tokens == 48
    summary = result[0].summary()
    assert summary["nudges_tried"] == len(result[0].nudges) > 0
    assert summary["nudges_kept"] == result[0].num_nudges
    assert summary["segments"] == len(result[0].segments)


def test_stop_sequence_across_a_segment_boundary_streams_exactly_the_final_text(decoder: GGRODecoder) -> None:
    # A stop cuts every candidate that would emit it, so their rewards, and which one is kept, can change before
    # the stop is reached: the rerun reproduces the free text up to the stop only where no candidate's choice
    # flips. For this tiny model that holds under sequential refinement; the hold-back being checked is the
    # sequence's, the same in both modes.
    options = {**OPTIONS, "refinement": "sequential"}
    free = decoder.generate("Tell me a story", **options)[0]
    boundaries, position = [], 0
    for segment in free.segments[:-1]:
        position += len(segment.text)
        boundaries.append(position)
    # A stop that starts two characters before a segment boundary and ends two after it, found nowhere earlier.
    stop = next(
        free.text[b - 2 : b + 2] for b in boundaries if b >= 2 and free.text.find(free.text[b - 2 : b + 2]) == b - 2
    )
    stream = decoder.stream("Tell me a story", stop_sequences=[stop], **options)
    deltas: list[str] = []
    while True:
        try:
            event = next(stream)
        except StopIteration as done:
            result = done.value[0]
            break
        if event.kind == "segment":
            deltas.append(event.text)
    assert result.finish_reason == "stop_sequence"
    assert result.text == free.text[: free.text.find(stop)]
    assert "".join(deltas) == result.text  # the stop's first characters were held back, never streamed


def test_astream_and_agenerate_match_generate(decoder: GGRODecoder) -> None:
    expected = decoder.generate(["Hello there", "What is rain?"], **OPTIONS)

    async def run() -> tuple[list[str], list[str], list[str]]:
        stream = decoder.astream(["Hello there", "What is rain?"], **OPTIONS)
        pieces = ["", ""]
        async for event in stream:
            if event.kind == "segment":
                pieces[event.sequence_index] += event.text
        assert stream.results is not None
        again = await decoder.agenerate(["Hello there", "What is rain?"], **OPTIONS)
        return pieces, [r.text for r in stream.results], [r.text for r in again]

    pieces, streamed, again = asyncio.run(run())
    assert pieces == streamed == again == [r.text for r in expected]


def test_leaving_an_async_stream_early_leaves_the_decoder_ready(decoder: GGRODecoder) -> None:
    expected = decoder.generate("Hello there", **OPTIONS)[0].text

    async def run() -> str:
        stream = decoder.astream("Hello there", max_new_tokens=400, refinement_steps=3)
        async for _ in stream:
            break
        task = asyncio.ensure_future(decoder.agenerate("Hello there", max_new_tokens=400, refinement_steps=3))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return (await decoder.agenerate("Hello there", **OPTIONS))[0].text

    assert asyncio.run(run()) == expected


def test_bad_input_raises_before_async_work_starts(decoder: GGRODecoder) -> None:
    with pytest.raises(ValueError, match="prompt: must be a non-empty string"):
        decoder.astream("   ")
    with pytest.raises(TypeError, match=r"GGRODecoder: unknown option 'temperature'; allowed per call: \["):
        decoder.astream("Hi", temperature=0.7)


def test_shared_decoder_loads_once_per_models(tmp_path: Path) -> None:
    policy_dir, reward_dir = save_tiny_models(tmp_path)
    first = shared_decoder(str(policy_dir), str(reward_dir))
    assert shared_decoder(policy_dir, reward_dir, dtype="float32", device="cpu") is first
    assert shared_decoder(policy_dir, reward_dir, dtype="bfloat16") is not first
    loaded = first.generate("Hi", **OPTIONS)[0]
    direct = tiny_decoder().generate("Hi", **OPTIONS)[0]
    assert loaded.token_ids == direct.token_ids  # the saved folders hold the same tiny models
    with pytest.raises(ValueError, match="dtype"):
        shared_decoder(policy_dir, reward_dir, dtype="float33")


def test_entropy_profile_matches_the_entropies_the_decoder_saw(decoder: GGRODecoder) -> None:
    result = decoder.generate("Hello there", **OPTIONS)[0]
    profile = decoder.entropy_profile(result.prompt_token_ids, result.token_ids)
    assert len(profile) == len(result.token_ids) + 1  # one more: the distribution after the last token
    for segment in result.segments[:-1]:
        # The entropy that ended a segment is the one before the next segment's first token.
        next_start = segment.start_position + len(segment.token_ids)
        assert segment.entropy_at_end is not None
        assert abs(profile[next_start] - segment.entropy_at_end) < 1e-4
    for nudge in result.nudges:
        assert abs(profile[nudge.insertion_position] - nudge.entropy) < 1e-4
