"""Tiny randomly initialised models for tests and examples: built in-process, no downloads.

A character-level tokenizer (printable ASCII and newline, ChatML chat template, ``<|im_end|>`` as end of
turn), a two-layer Llama policy and a Llama sequence-classification reward on the same vocabulary. The
text they produce is noise, but every code path of the decoder and the framework integrations runs on
them in milliseconds: integration suites and cookbooks use them for their default, fast runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .config import GGROConfig
from .decoder import GGRODecoder
from .rewards.hf import HFRewardModel

__all__ = [
    "HERMES_CHAT_TEMPLATE",
    "MULTIPLY_TOOL",
    "TINY_CHAT_TEMPLATE",
    "save_tiny_models",
    "tiny_decoder",
    "tiny_policy",
    "tiny_reward",
    "tiny_tokenizer",
]

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
_CHARS = ["\n", *(chr(c) for c in range(32, 127))]

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# A chat template modelled on Qwen2.5's hermes one (written for tests): tools in the system turn inside
# <tools></tools>, assistant tool calls as <tool_call> blocks (arguments through tojson: a dict is needed), tool
# results as <tool_response> blocks of one user turn. Set it on the tiny tokenizer to test tool prompts.
HERMES_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    '{{- \'\\n</tools>\\nCall a tool as <tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls %}"
    "{%- set call = call.function if call.function is defined else call %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' + (call.arguments | tojson) }}'
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MULTIPLY_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
"""An OpenAI-style tool for tests."""


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """One token per character (printable ASCII and newline; anything else is ``<unk>``), ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(_SPECIALS + _CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    specials = "|".join(s.replace("|", r"\|") for s in _SPECIALS[:3])
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(rf"{specials}|[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _config(tokenizer: PreTrainedTokenizerBase, std: float, **extra: Any) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=4096,  # room for framework prompt templates at one token per character
        initializer_range=std,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_policy(tokenizer: PreTrainedTokenizerBase, seed: int = 0, std: float = 0.3) -> LlamaForCausalLM:
    """A random two-layer Llama. Its end-of-turn logit is zeroed so that greedy answers run to the token
    budget or a stop sequence instead of ending at a random first token (tests then see non-empty text)."""
    torch.manual_seed(seed)
    cfg = _config(tokenizer, std, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    return model


def tiny_reward(tokenizer: PreTrainedTokenizerBase, seed: int = 1, std: float = 0.3) -> HFRewardModel:
    """A random two-layer Llama sequence classifier on the tokenizer's vocabulary (differentiable)."""
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_config(tokenizer, std, num_labels=1)).eval()
    return HFRewardModel(model, name="tiny-rm")


def tiny_decoder(seed: int = 0, config: GGROConfig | None = None) -> GGRODecoder:
    """A decoder on a tiny policy and a tiny reward (different seeds), with the tiny tokenizer."""
    tokenizer = tiny_tokenizer()
    return GGRODecoder(tiny_policy(tokenizer, seed), tokenizer, tiny_reward(tokenizer, seed + 1), config)


def save_tiny_models(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a tiny policy and reward (with the tokenizer) as ``save_pretrained`` folders, for the code paths
    that load by id or path. Returns (policy directory, reward directory)."""
    root = Path(directory)
    tokenizer = tiny_tokenizer()
    policy_dir, reward_dir = root / "tiny-policy", root / "tiny-reward"
    tiny_policy(tokenizer, seed).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    reward = tiny_reward(tokenizer, seed + 1)
    reward.model.save_pretrained(reward_dir)
    tokenizer.save_pretrained(reward_dir)
    return policy_dir, reward_dir
