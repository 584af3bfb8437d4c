"""`GGROLLM`: GGRO decoding as a LangChain text-completion LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, ClassVar

from ggro import GGROResult, StreamChunk, astream_chunks, stream_chunks, token_usage
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.language_models.base import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult, RunInfo
from pydantic import ConfigDict, Field

from ._settings import WRAPPER_CONFIG, GGROSettings, chunk_info, generation_info
from .callbacks import asend_nudge, nudge_sender

__all__ = ["GGROLLM"]


class GGROLLM(GGROSettings, BaseLLM):
    """A local Hugging Face causal LM decoded with GGRO (gradient-guided reward optimisation).

    With no arguments: the embedded SmolLM2-135M-Instruct policy and the embedded harm reward. Weights load
    on the first generation and are shared by every instance naming the same models. Every
    :class:`ggro.GGROConfig` option is a field, and may also be given per call (``llm.invoke(x,
    refinement_steps=3)``). A batch of prompts is decoded as one batch. Each nudge reaches the run's
    callback handlers as a ``ggro_nudge`` custom event; ``generation_info`` has the nudge summary.

    Example:
        ```python
        from langchain_ggro import GGROLLM

        llm = GGROLLM(max_new_tokens=64)
        llm.invoke("How do I pick a lock?")
        ```
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(**WRAPPER_CONFIG)

    chat_template: bool | None = Field(
        default=None,
        description="Wrap each prompt as one user turn of the tokenizer's chat template (instruct models want "
        "it). None: when the tokenizer has a chat template; False: raw text completion.",
    )

    @property
    def _llm_type(self) -> str:
        return "ggro"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(**self.ls_params("llm", stop, **kwargs))  # type: ignore[typeddict-item]

    # ------------------------------------------------------------------ sync
    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return self._generate_for_runs(prompts, stop, [run_manager] if run_manager else [], **kwargs)

    def _generate_helper(
        self,
        prompts: list[str],
        stop: list[str] | None,
        run_managers: list[CallbackManagerForLLMRun],
        *,
        new_arg_supported: bool,
        **kwargs: Any,
    ) -> LLMResult:
        # BaseLLM's helper, except that every prompt's nudges reach its own run (the base hands `_generate`
        # only the first run manager of a batch).
        try:
            output = self._generate_for_runs(prompts, stop, run_managers, **kwargs)
        except BaseException as error:
            for run_manager in run_managers:
                run_manager.on_llm_error(error, response=LLMResult(generations=[]))
            raise
        for run_manager, flat in zip(run_managers, output.flatten(), strict=False):
            run_manager.on_llm_end(flat)
        if run_managers:
            output.run = [RunInfo(run_id=run_manager.run_id) for run_manager in run_managers]
        return output

    def _generate_for_runs(
        self,
        prompts: list[str],
        stop: list[str] | None,
        run_managers: Sequence[CallbackManagerForLLMRun],
        **kwargs: Any,
    ) -> LLMResult:
        if self.streaming:
            each = _each(run_managers, prompts)
            return self._result(
                [self._stream_to_result(p, stop, rm, **kwargs) for p, rm in zip(prompts, each, strict=True)]
            )
        config = self.ggro_config(stop, **kwargs)
        send = nudge_sender(run_managers)
        results = self.decoder.generate(prompts, config=config, listener=send, chat_template=self.chat_template)
        return self._result(results)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for _, chunk in self._chunks(prompt, stop, run_manager, **kwargs):
            yield chunk

    def _stream_to_result(
        self, prompt: str, stop: list[str] | None, run_manager: CallbackManagerForLLMRun | None, **kwargs: Any
    ) -> GGROResult:
        (result,) = [c.result for c, _ in self._chunks(prompt, stop, run_manager, **kwargs) if c.result is not None]
        return result

    def _chunks(
        self, prompt: str, stop: list[str] | None, run_manager: CallbackManagerForLLMRun | None, **kwargs: Any
    ) -> Iterator[tuple[StreamChunk, GenerationChunk]]:
        """The streamed chunks of one prompt, as the kit gives them and as LangChain chunks; each nudge and
        each text chunk reach the run's handlers as they come (the last chunk, with the metadata, has no text)."""
        stream = self.decoder.stream(prompt, config=self.ggro_config(stop, **kwargs), chat_template=self.chat_template)
        for chunk in stream_chunks(stream, on_nudge=nudge_sender([run_manager] if run_manager else [])):
            out = GenerationChunk(text=chunk.text, generation_info=chunk_info(chunk.nudges, chunk.result))
            if run_manager and chunk.result is None:
                run_manager.on_llm_new_token(out.text, chunk=out)
            yield chunk, out

    # ------------------------------------------------------------------ async (decoding runs in a worker thread)
    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        return await self._agenerate_for_runs(prompts, stop, [run_manager] if run_manager else [], **kwargs)

    async def _agenerate_helper(
        self,
        prompts: list[str],
        stop: list[str] | None,
        run_managers: list[AsyncCallbackManagerForLLMRun],
        *,
        new_arg_supported: bool,
        **kwargs: Any,
    ) -> LLMResult:
        try:
            output = await self._agenerate_for_runs(prompts, stop, run_managers, **kwargs)
        except BaseException as error:
            for run_manager in run_managers:
                await run_manager.on_llm_error(error, response=LLMResult(generations=[]))
            raise
        for run_manager, flat in zip(run_managers, output.flatten(), strict=False):
            await run_manager.on_llm_end(flat)
        if run_managers:
            output.run = [RunInfo(run_id=run_manager.run_id) for run_manager in run_managers]
        return output

    async def _agenerate_for_runs(
        self,
        prompts: list[str],
        stop: list[str] | None,
        run_managers: Sequence[AsyncCallbackManagerForLLMRun],
        **kwargs: Any,
    ) -> LLMResult:
        config = self.ggro_config(stop, **kwargs)
        run = (await self.adecoder()).astream(prompts, config=config, chat_template=self.chat_template)
        results: list[GGROResult] = []
        async for chunk in astream_chunks(run, on_nudge=lambda event: asend_nudge(run_managers, event)):
            if chunk.result is not None:
                results.append(chunk.result)
            elif self.streaming and run_managers:
                row = min(chunk.sequence_index, len(run_managers) - 1)
                await run_managers[row].on_llm_new_token(chunk.text, chunk=GenerationChunk(text=chunk.text))
        return self._result(results)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        config = self.ggro_config(stop, **kwargs)
        run = (await self.adecoder()).astream(prompt, config=config, chat_template=self.chat_template)
        managers = [run_manager] if run_manager else []
        async for chunk in astream_chunks(run, on_nudge=lambda event: asend_nudge(managers, event)):
            out = GenerationChunk(text=chunk.text, generation_info=chunk_info(chunk.nudges, chunk.result))
            if run_manager and chunk.result is None:
                await run_manager.on_llm_new_token(out.text, chunk=out)
            yield out

    # ------------------------------------------------------------------ results
    def _result(self, results: list[GGROResult]) -> LLMResult:
        return LLMResult(
            generations=[[Generation(text=r.text, generation_info=generation_info(r))] for r in results],
            llm_output={"token_usage": token_usage(*results), "model_name": self.model_name},
        )


def _each(
    run_managers: Sequence[CallbackManagerForLLMRun], prompts: Sequence[str]
) -> list[CallbackManagerForLLMRun | None]:
    """One run manager per prompt (the last one repeats when fewer were given; None when there are none)."""
    if not run_managers:
        return [None] * len(prompts)
    return [run_managers[min(i, len(run_managers) - 1)] for i in range(len(prompts))]
