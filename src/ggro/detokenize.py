"""Token ids to response text: decoding, stop sequences (which live in text, not in tokens) and the hold-back
that keeps streamed text deltas adding up to the final text."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from .segments import common_prefix_length

__all__ = ["Detokenizer", "StreamedText", "stop_prefix_length", "streamable_text"]


class Detokenizer:
    """A tokenizer's decode, with the stop-sequence questions the decoder asks of decoded text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text if isinstance(text, str) else "".join(text)

    def retokenize(self, ids: list[int]) -> list[int]:
        """The ids the tokenizer gives the decoded text (a generation's ids need not be the canonical ones)."""
        text = self.decode(ids, skip_special_tokens=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def response_text(self, response_ids: list[int], stops: Sequence[str]) -> str:
        """The text of a response, cut before the first stop sequence in it."""
        text: str = self.decode(response_ids, skip_special_tokens=True)
        if stops:
            cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text

    def hits_stop(self, ids: list[int], stops: Sequence[str]) -> bool:
        text = self.decode(ids, skip_special_tokens=True)
        return any(s in text for s in stops)

    def cut_ids_at_stop(self, ids: list[int], text: str) -> list[int]:
        """The longest prefix of ``ids`` whose text lies within ``text`` (the response cut at its stop)."""
        k = len(ids)
        while k > 0 and not text.startswith(self.decode(ids[:k], skip_special_tokens=True)):
            k -= 1
        return ids[:k]


def stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that a stop sequence starts with (0: none)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def streamable_text(text: str, stops: Sequence[str]) -> str:
    """``text`` less what a later segment may still change. A character split across segments decodes as U+FFFD
    until its last byte arrives, and a stop sequence may begin in this segment and end in the next: both are
    held back, so the streamed deltas always add up to the final text."""
    text = text.rstrip("\ufffd")
    return text[: len(text) - stop_prefix_length(text, stops)]


class StreamedText:
    """The text of a response streamed so far, and the delta each accepted segment adds to it."""

    def __init__(self) -> None:
        self.text = ""

    def advance(self, text_now: str, stops: Sequence[str], final: bool) -> str:
        """The new text to stream now that the response reads ``text_now`` (held back unless ``final``)."""
        if not final:
            text_now = streamable_text(text_now, stops)
        common = common_prefix_length(self.text, text_now)
        delta = text_now[common:]
        self.text = self.text[:common] + delta
        return delta
