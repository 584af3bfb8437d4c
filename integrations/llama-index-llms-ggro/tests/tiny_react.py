"""A tiny policy trained in-process to act as a ReAct agent for one question, so that the agent tests run a
real `ReActAgent` loop (tool call, observation, final answer) through GGRO in seconds.

A random model cannot follow the ReAct format, so the tiny Llama here is overfitted (a few seconds of Adam
on the tiny character tokenizer) to the exact chat inputs `ReActAgent` builds for one question: the first
turn answers with a tool call, the turn after the observation with a final answer. At two places the
transcripts fork between "." and "!" (trained 60/40), so the policy is unsure exactly there: greedy decoding
takes ".", and a reward that prefers "!" gives GGRO a nudge to make at each fork. The rest of each
transcript is learnt with near-zero entropy, so nothing else is nudged and the format survives steering.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from llama_index.core.agent.react.formatter import ReActChatFormatter
from llama_index.core.agent.react.types import ActionReasoningStep, ObservationReasoningStep
from llama_index.core.llms import ChatMessage
from llama_index.core.tools import BaseTool, FunctionTool
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

QUESTION = "What is the weather in Paris?"
CITY = "Paris"
OBSERVATION = f"sunny in {CITY}"
FORKS = (".", "!")
"""The two endings of each transcript's first line: greedy decoding picks the first."""
FORK_WEIGHTS = (0.6, 0.4)

# The default ReAct header is ~2,300 characters (= tokens here): training on it takes minutes on 2 CPU
# cores. This one keeps the same placeholders and the same output format.
SHORT_HEADER = (
    "You answer with tools.\n{tool_desc}\n"
    "Reply 'Thought: ...' then 'Action: <one of {tool_names}>' and 'Action Input: <JSON>', or 'Answer: ...'."
)

# The tiny model's settings for the agent: a segment ends where the policy is unsure (only at the forks),
# and a nudge chooses between the two fork tokens.
AGENT_OPTIONS: dict[str, object] = {
    "entropy_threshold": 0.5,
    "nudge_top_k": 2,
    "refinement_steps": 2,
    "max_new_tokens": 96,
}


def weather_tool(calls: list[dict[str, str]]) -> FunctionTool:
    """The agent's one tool; each call's arguments are appended to ``calls``."""

    def weather(city: str) -> str:
        """Current weather in a city."""
        calls.append({"city": city})
        return f"sunny in {city}"

    return FunctionTool.from_defaults(weather)


def formatter() -> ReActChatFormatter:
    return ReActChatFormatter.from_defaults(system_header=SHORT_HEADER)


def tool_call(fork: str) -> str:
    return f'Thought: I need a tool{fork}\nAction: weather\nAction Input: {{"city": "{CITY}"}}'


def final_answer(fork: str) -> str:
    return f"Thought: I can answer.\nAnswer: It is sunny in {CITY}{fork}"


def agent_inputs(tool: BaseTool) -> list[tuple[list[ChatMessage], list[str]]]:
    """Each chat input the agent can send (built by LlamaIndex's own formatter and reasoning steps, as the
    agent builds them) with the responses the policy learns for it (one per fork)."""
    user = [ChatMessage(role="user", content=QUESTION)]
    fmt = formatter()
    pairs = [(fmt.format([tool], user, []), [tool_call(f) for f in FORKS])]
    for fork in FORKS:  # the first turn's thought, as the agent parses it, is in the second turn's input
        action = ActionReasoningStep(thought=f"I need a tool{fork}", action="weather", action_input={"city": CITY})
        steps = [action, ObservationReasoningStep(observation=OBSERVATION)]
        pairs.append((fmt.format([tool], user, steps), [final_answer(f) for f in FORKS]))
    return pairs


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage]) -> list[int]:
    turns = [{"role": m.role.value, "content": m.content or ""} for m in messages]
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def train_react_policy(tokenizer: PreTrainedTokenizerBase, tool: BaseTool, steps: int = 90) -> LlamaForCausalLM:
    """Overfit a tiny Llama to :func:`agent_inputs` (loss on the responses only, forks weighted 60/40)."""
    eos = tokenizer.eos_token_id
    rows: list[tuple[list[int], list[int], float]] = []
    for messages, responses in agent_inputs(tool):
        prompt = encode_chat(tokenizer, messages)
        for response, weight in zip(responses, FORK_WEIGHTS, strict=True):
            rows.append((prompt, [*tokenizer(response, add_special_tokens=False)["input_ids"], eos], weight))
    length = max(len(p) + len(r) for p, r, _ in rows)
    inputs = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (prompt, response, _) in enumerate(rows):
        ids = prompt + response
        inputs[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, len(prompt) : len(ids)] = torch.tensor(response)
    weights = torch.tensor([w for _, _, w in rows])

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    targets = labels[:, 1:]
    for _ in range(steps):
        logits = model(input_ids=inputs, attention_mask=mask).logits[:, :-1]
        token_loss = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        loss = (token_loss.sum(dim=1) * weights).sum() / (targets != -100).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def prefers_exclamations(prompts: list[str], responses: list[str]) -> list[float]:
    """The agent tests' reward: the number of "!" in the response."""
    return [float(r.count("!")) for r in responses]
