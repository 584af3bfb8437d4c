"""LangChain's standard unit tests for chat models, on `ChatGGRO` with tiny models."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_ggro import ChatGGRO
from tests.tiny import tiny_params


class TestChatGGROUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatGGRO

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return tiny_params()

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A local model has no network timeout and nothing to retry: `timeout` and `max_retries` are not
        # fields (passing them is an error, like any unknown argument).
        return {"temperature": 0, "max_tokens": 100, "stop": []}

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
