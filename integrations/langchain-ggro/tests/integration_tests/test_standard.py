"""LangChain's standard integration tests for chat models, on `ChatGGRO` with tiny models (real decoding)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_ggro import ChatGGRO
from tests.tiny import tiny_params


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

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one policy per instance: `model=` per call is refused, not silently ignored
