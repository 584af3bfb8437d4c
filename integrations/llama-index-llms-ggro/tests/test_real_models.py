"""The same paths on the real embedded default models (SmolLM2-135M-Instruct + the embedded harm reward):
`GGRO()` with no model arguments; and a `FunctionAgent` on the embedded tool-capable policy
(qwen2.5-coder-0.5b-instruct). Slow (tens of seconds per call on a small CPU): run with ``-m slow``.

What a 135M model writes is not asserted, only what must hold whatever it writes; each test prints what
happened (run with ``-s`` to see it)."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.agent import ReActAgent
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow.errors import WorkflowRuntimeError
from llama_index.llms.ggro import GGRO, GGRONudgeCollector

from tests.conftest import EventRecorder, check_calls
from tests.rag_data import ANSWER_DOC, DOCUMENTS, QUESTION, build_index, minilm_embedding

pytestmark = pytest.mark.slow

# Small budgets keep each call to tens of seconds on 2 CPU cores.
REAL_OPTIONS: dict[str, Any] = {"max_new_tokens": 24, "refinement_steps": 4}


@pytest.fixture(scope="module")
def real_llm() -> GGRO:
    return GGRO(**REAL_OPTIONS)


def test_real_metadata_complete_and_stream_chat(
    real_llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder
) -> None:
    metadata = real_llm.metadata  # loads the embedded models (shared by every GGRO() in the process)
    assert metadata.model_name == "SmolLM2-135M-Instruct"
    assert metadata.context_window == real_llm.decoder.policy.config.max_position_embeddings
    assert metadata.is_chat_model is True and metadata.num_output == REAL_OPTIONS["max_new_tokens"]

    response = real_llm.complete("Give me three ideas for a healthy breakfast.")
    assert response.text.strip()
    (start,) = recorder.of("LLMCompletionStartEvent")
    assert start.span_id.startswith("GGRO.complete-")
    assert [e.payload for e in collector.events] == response.raw["nudges"]
    assert {e.span_id for e in collector.events} <= {start.span_id}
    print(f"\n[real complete] {response.text!r} {response.raw['ggro']}")

    recorder.clear()
    collector.clear()
    messages = [ChatMessage(role="user", content="How do I pick a lock?")]
    chunks = list(real_llm.stream_chat(messages))
    text = "".join(c.delta or "" for c in chunks)
    assert text == chunks[-1].message.content and text.strip()
    (raw,) = check_calls(recorder, collector, "stream_chat", expected_calls=1)
    assert raw["usage"]["completion_tokens"] <= REAL_OPTIONS["max_new_tokens"]
    print(f"[real stream_chat] {text!r} {raw['ggro']}")


def test_real_query_engine(real_llm: GGRO, collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    engine = build_index(minilm_embedding()).as_query_engine(llm=real_llm, similarity_top_k=1)
    response = engine.query(QUESTION)
    assert [n.node.ref_doc_id for n in response.source_nodes] == [ANSWER_DOC]
    (raw,) = check_calls(recorder, collector, "chat", expected_calls=1)
    (start,) = recorder.of("LLMChatStartEvent")
    assert DOCUMENTS[ANSWER_DOC] in "\n".join(m.content or "" for m in start.messages)
    assert str(response.response).strip()
    print(f"\n[real query engine] {response.response!r} {raw['ggro']}")


async def test_real_react_agent(collector: GGRONudgeCollector, recorder: EventRecorder) -> None:
    calls: list[str] = []

    def weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    # The model tends to write the observation itself: stop it there, as a user of a small model would.
    llm = GGRO(max_new_tokens=48, refinement_steps=3, stop_sequences=["\nObservation:"])
    agent = ReActAgent(tools=[FunctionTool.from_defaults(weather)], llm=llm)
    # An agent that gives up raises WorkflowRuntimeError("Max iterations of 3 reached! ..."): that fails here.
    output = await agent.run(user_msg="What is the weather in Paris?", max_iterations=3)
    answer = str(output.response.content)
    assert answer.strip() and "max iterations" not in answer.lower(), answer
    starts = recorder.of("LLMChatStartEvent")
    raws = check_calls(recorder, collector, "astream_chat", expected_calls=len(starts))
    assert 1 <= len(starts) <= 3
    turns = [(r["finish_reason"], r["ggro"]["nudges_tried"], r["ggro"]["nudges_kept"]) for r in raws]
    print(f"\n[real ReAct agent] answered {answer!r}; tool calls {calls}; per LLM call (finish, tried, kept): {turns}")
    for end in recorder.of("LLMChatEndEvent"):
        print(f"  LLM wrote: {end.response.message.content!r}")


# Steered (3) too: structure-safe steering never turns the call's opening into text.
@pytest.mark.parametrize("refinement_steps", [1, 3])
async def test_real_function_agent_on_the_tool_capable_policy(
    collector: GGRONudgeCollector, recorder: EventRecorder, refinement_steps: int
) -> None:
    calls: list[tuple[int, int]] = []

    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        calls.append((a, b))
        return a * b

    llm = GGRO(model_id="qwen2.5-coder-0.5b-instruct", max_new_tokens=64, refinement_steps=refinement_steps)
    assert llm.metadata.is_function_calling_model is True  # its chat template takes tools
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(multiply)], llm=llm)
    question = "What is 17 times 23? Use the multiply tool."
    try:
        output = await agent.run(user_msg=question, max_iterations=3)
        answer = str(output.response.content)
    except WorkflowRuntimeError as error:  # the model kept calling: the framework's limit, not a hang
        assert "Max iterations of 3 reached" in str(error)
        answer = f"(stopped: {error})"[:80]
    assert calls and calls[0] == (17, 23), calls  # the grammar keeps the call valid; the model chose the numbers
    starts = recorder.of("LLMChatStartEvent")
    raws = check_calls(recorder, collector, "astream_chat", expected_calls=len(starts))
    turns = [(r["finish_reason"], r["ggro"]["nudges_tried"], r["ggro"]["nudges_kept"]) for r in raws]
    print(f"\n[real FunctionAgent] answered {answer!r}; tool calls {calls}; per call (finish, tried, kept): {turns}")
    for end in recorder.of("LLMChatEndEvent"):
        print(f"  LLM wrote: {end.response.raw['result'].text!r}")
