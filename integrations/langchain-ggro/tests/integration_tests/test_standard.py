"""LangChain's standard integration tests for chat models, on `ChatGGRO` with tiny models (real decoding)."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_ggro import ChatGGRO
from tests.tiny import tiny_params

# The tests whose calls are tool calls or JSON. The tiny tokenizer has one token per character, so a call or an
# object needs 50 to 80 tokens, and the grammar refuses a budget too small for its shortest output. The other
# tests keep a small budget: the tiny policy never ends a free answer by itself, so it runs to the budget.
_STRUCTURED_BUDGET = 128
_STRUCTURED_TESTS = ("tool", "structured", "json_mode", "agent_loop")

# What the grammar guarantees (a call of the right tool, arguments of the right types, an object of the right
# shape) the tiny random policy passes; these tests also need the model to understand the request, which no
# grammar can supply. Each runs in full up to that assertion.
_READS_THE_QUESTION = "needs a model that reads the question: the argument must be the 3 it asks about (got noise)"
_FOLLOWS_THE_PROMPT = (
    "needs a model that follows the prompt: json_mode constrains to a JSON object, the prompt names the keys"
)
_CHOOSES_TO_CALL = (
    "needs a model that chooses to call the tool: tool_choice is 'auto' here (the tiny model writes text)"
)
_COPIES_THE_NAME = "needs a model that copies the Chinese name (the tiny tokenizer is ASCII): the call itself is valid"


class TestChatGGROIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatGGRO

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return tiny_params()

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # No network timeout or retries for a local model (see the unit tests).
        return {"temperature": 0, "max_tokens": 24, "stop": []}

    @pytest.fixture
    def model(self, request: Any) -> BaseChatModel:
        params = {
            **self.standard_chat_model_params,
            **self.chat_model_params,
            **(getattr(request, "param", None) or {}),
        }
        if any(word in request.node.name for word in _STRUCTURED_TESTS):
            params["max_tokens"] = _STRUCTURED_BUDGET
        return self.chat_model_class(**params)

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one policy per instance: `model=` per call is refused, not silently ignored

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @pytest.mark.xfail(reason=_READS_THE_QUESTION)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason=_READS_THE_QUESTION)
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason=_FOLLOWS_THE_PROMPT)
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)

    @pytest.mark.xfail(reason=_CHOOSES_TO_CALL)
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=_COPIES_THE_NAME)
    def test_unicode_tool_call_integration(
        self, model: BaseChatModel, *, tool_choice: str | None = None, force_tool_call: bool = True
    ) -> None:
        super().test_unicode_tool_call_integration(model, tool_choice=tool_choice, force_tool_call=force_tool_call)
