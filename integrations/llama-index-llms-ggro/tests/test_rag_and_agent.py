"""GGRO inside LlamaIndex's own machinery, on tiny models: a `VectorStoreIndex` query engine over local
documents (real MiniLM embeddings) and a `ReActAgent` with one tool (a tiny policy trained in-process to
speak ReAct, see `tiny_react.py`)."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.agent import ReActAgent
from llama_index.llms.ggro import GGRO, GGRONudgeCollector
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from ggro import CallableReward, GGRODecoder
from ggro.testing import tiny_decoder, tiny_tokenizer
from tests import tiny_react
from tests.conftest import EventRecorder, check_calls
from tests.rag_data import ANSWER_DOC, DOCUMENTS, QUESTION, build_index, minilm_embedding


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    return build_index(minilm_embedding())


# ---------------------------------------------------------------------------------------------- query engine
@pytest.mark.parametrize("mode", ["sync", "streaming", "async"])
async def test_query_engine(
    index: VectorStoreIndex, collector: GGRONudgeCollector, recorder: EventRecorder, mode: str
) -> None:
    llm = GGRO.from_decoder(tiny_decoder(), max_new_tokens=32, refinement_steps=3)
    previous = Settings._llm
    Settings.llm = llm  # how LlamaIndex users plug an LLM in
    try:
        engine = index.as_query_engine(similarity_top_k=1, streaming=mode == "streaming")
        if mode == "async":
            response: Any = await engine.aquery(QUESTION)
            answer = response.response
        else:
            response = engine.query(QUESTION)
            answer = "".join(response.response_gen) if mode == "streaming" else response.response
    finally:
        Settings._llm = previous

    assert [n.node.ref_doc_id for n in response.source_nodes] == [ANSWER_DOC]  # MiniLM found the document
    method = {"sync": "chat", "streaming": "stream_chat", "async": "achat"}[mode]
    (raw,) = check_calls(recorder, collector, method, expected_calls=1)
    assert raw["nudges"], "the tiny models nudge: no nudge means the event check checks nothing"
    (start,) = recorder.of("LLMChatStartEvent")
    assert DOCUMENTS[ANSWER_DOC] in "\n".join(m.content or "" for m in start.messages)  # the context reached GGRO
    (end,) = recorder.of("LLMChatEndEvent")
    assert answer == end.response.message.content  # the engine's answer is GGRO's output
    assert raw["usage"]["completion_tokens"] == 32


# ---------------------------------------------------------------------------------------------- ReAct agent
@pytest.fixture(scope="module")
def react_policy() -> tuple[PreTrainedTokenizerBase, LlamaForCausalLM]:
    tokenizer = tiny_tokenizer()
    return tokenizer, tiny_react.train_react_policy(tokenizer, tiny_react.weather_tool([]))


async def run_agent(
    react_policy: tuple[PreTrainedTokenizerBase, LlamaForCausalLM], streaming: bool, **options: Any
) -> tuple[str, list[dict[str, str]], list[Any]]:
    tokenizer, policy = react_policy
    calls: list[dict[str, str]] = []
    tool = tiny_react.weather_tool(calls)
    reward = CallableReward(tiny_react.prefers_exclamations, name="exclamations")
    llm = GGRO.from_decoder(GGRODecoder(policy, tokenizer, reward), **{**tiny_react.AGENT_OPTIONS, **options})
    agent = ReActAgent(tools=[tool], llm=llm, formatter=tiny_react.formatter(), streaming=streaming)
    output = await agent.run(user_msg=tiny_react.QUESTION, max_iterations=4)
    return str(output.response.content), calls, tiny_react.agent_inputs(tool)


@pytest.mark.parametrize("streaming", [True, False])
async def test_react_agent(
    react_policy: tuple[PreTrainedTokenizerBase, LlamaForCausalLM],
    collector: GGRONudgeCollector,
    recorder: EventRecorder,
    streaming: bool,
) -> None:
    answer, calls, trained = await run_agent(react_policy, streaming)

    # The agent sent exactly the inputs the tiny policy was trained on (else LlamaIndex's ReAct prompts
    # changed, and the policy must be retrained on the new ones).
    known = [[(m.role.value, m.content) for m in messages] for messages, _ in trained]
    for start in recorder.of("LLMChatStartEvent"):
        assert [(m.role.value, m.content) for m in start.messages] in known
    assert calls == [{"city": tiny_react.CITY}]  # the tool ran once, with the arguments GGRO wrote

    # Greedy decoding ends both turns with "." (see the control below); the reward prefers "!", and GGRO's
    # nudges put it there, through the agent's whole loop.
    assert answer == f"It is sunny in {tiny_react.CITY}!"
    raws = check_calls(recorder, collector, "astream_chat" if streaming else "achat", expected_calls=2)
    assert [[(n["draft_token"], n["nudge_token"], n["kept"]) for n in raw["nudges"]] for raw in raws] == [
        [(".", "!", True)],
        [(".", "!", True)],
    ]


async def test_react_agent_greedy_control(
    react_policy: tuple[PreTrainedTokenizerBase, LlamaForCausalLM], collector: GGRONudgeCollector
) -> None:
    answer, calls, _ = await run_agent(react_policy, streaming=True, refinement_steps=1)
    assert answer == f"It is sunny in {tiny_react.CITY}."
    assert calls == [{"city": tiny_react.CITY}]
    assert collector.events == []
