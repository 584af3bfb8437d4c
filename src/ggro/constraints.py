"""Constrained decoding: a grammar (a JSON schema, tool calls, a Lark grammar) that the response must follow,
enforced as a token mask on the draft, on every refinement and on the nudge candidates.

The grammar engine is llguidance (``LLMatcher``): it compiles JSON schemas and Lark grammars (with embedded
JSON schemas, which tool calls need), computes a mask over a 150k vocabulary in well under a millisecond with
no warm-up compile, rolls back token by token (refinements restart from the insertion position), and works
with any Hugging Face fast tokenizer, byte-level or not; a non-byte-level tokenizer falls back to its tokens'
decoded text. JSON is generated compactly (no free whitespace), and a response under a JSON-based constraint
is closed before the token budget runs out: near the end, tokens follow the shortest completion this module
finds (:meth:`ConstraintState.within_budget`).
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from .segments import common_prefix_length
from .structure import (
    HermesLayout,
    JsonLayout,
    Layout,
    Llama3JsonLayout,
    OpaqueLayout,
    Position,
)

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = [
    "MAX_SCHEMA_CHARS",
    "Constraint",
    "ConstraintError",
    "ConstraintState",
    "GrammarVocabulary",
    "ToolChoice",
    "grammar_vocabulary",
]

MAX_SCHEMA_CHARS = 100_000
"""Largest schema or grammar (in characters of its JSON / Lark text) a constraint accepts."""

ToolChoice = str
"""``"auto"`` (text or tool calls), ``"required"`` / ``"any"`` (at least one call), ``"none"`` (no calls, no
constraint), or a tool's name (a call of that tool)."""

_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
_TAGS = ("<tool_call>", "</tool_call>")
_CALL_SEPARATOR = {"hermes": "\n", "llama3_json": ";"}
_ARGUMENTS_KEY = {"hermes": "arguments", "llama3_json": "parameters"}
# Tokens tried first when closing a structure, by what the JSON scanner expects next.
_CLOSERS: dict[str, tuple[str, ...]] = {
    "string": ('"',),
    "comma_or_close": ("}", "]", ","),
    "literal": ("}", "]", ","),
    "value": ("0", "null", "false", "true", '"', "[]", "{}", "[", "{"),
    "key": ("}", '"'),
    "colon": (":",),
}


class ConstraintError(RuntimeError):
    """The grammar engine refused a token the decoder had to feed it (a retokenised context, a bug)."""


# ---------------------------------------------------------------------------------------------- the vocabulary
class GrammarVocabulary:
    """A tokenizer as the grammar engine sees it (built once per tokenizer and vocabulary size, ~1 s for 150k
    tokens), with each token's byte length and the ids of single-token closers."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        eos = sorted(int(i) for i in eos_token_ids) or [int(tokenizer.eos_token_id or 0)]
        self.vocab_size = vocab_size
        self.eos_token_ids = frozenset(eos)
        try:
            self.ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)  # type: ignore[arg-type]
        except (ValueError, RuntimeError):  # not a byte-level / sentencepiece fast tokenizer: read its tokens' text
            self.ll = llguidance.LLTokenizer(
                llguidance.TokenizerWrapper(_DecodedTokens(tokenizer, vocab_size, eos[0])), eos_token=eos
            )
        self.byte_lengths = np.array([len(self.ll.decode_bytes([i])) for i in range(vocab_size)], dtype=np.int64)
        self._single: dict[str, int | None] = {}
        self.special_ids: dict[str, int] = {}
        """Tags the tokenizer holds as special tokens (Qwen's ``<tool_call>``): a grammar must name them."""
        for tag in _TAGS:
            token = tokenizer.convert_tokens_to_ids(tag)
            if isinstance(token, int) and token != tokenizer.unk_token_id and self.ll.is_special_token(token):
                self.special_ids[tag] = token

    def text(self, tokens: Sequence[int]) -> str:
        return self.ll.decode_bytes(list(tokens)).decode("utf-8", errors="replace")

    def single_token(self, text: str) -> int | None:
        """The id of the token whose text is exactly ``text``, if there is one."""
        if text not in self._single:
            ids = self.ll.tokenize_str(text)
            self._single[text] = ids[0] if len(ids) == 1 else None
        return self._single[text]


class _DecodedTokens:
    """The interface ``llguidance.TokenizerWrapper`` reads, from a tokenizer's decoded tokens (special tokens
    marked with a 0xFF prefix, as llguidance expects)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos: int) -> None:
        specials = set(tokenizer.all_special_ids)
        self.eos_token_id = eos
        self.bos_token_id = tokenizer.bos_token_id
        self.special_token_ids = sorted(specials)
        self.tokens: list[bytes] = []
        for i in range(vocab_size):
            if i >= len(tokenizer):
                self.tokens.append(b"")
            elif i in specials:
                self.tokens.append(b"\xff" + str(tokenizer.convert_ids_to_tokens(i)).encode())
            else:
                self.tokens.append(str(tokenizer.decode([i])).encode())
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])


_VOCABULARIES: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, dict[tuple[int, frozenset[int]], GrammarVocabulary]]
_VOCABULARIES = weakref.WeakKeyDictionary()
_VOCABULARY_LOCK = threading.Lock()


def grammar_vocabulary(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, eos_token_ids: Sequence[int]
) -> GrammarVocabulary:
    """The grammar engine's view of ``tokenizer`` (cached per tokenizer object)."""
    key = (vocab_size, frozenset(eos_token_ids))
    with _VOCABULARY_LOCK:
        per_tokenizer = _VOCABULARIES.setdefault(tokenizer, {})
        if key not in per_tokenizer:
            per_tokenizer[key] = GrammarVocabulary(tokenizer, vocab_size, eos_token_ids)
        return per_tokenizer[key]


# ---------------------------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Constraint:
    """What a response must be. Build one with :meth:`json_schema`, :meth:`json_object`, :meth:`for_tools` or
    :meth:`lark`; give it to ``GGRODecoder.generate(..., constraint=...)``. Immutable and reusable."""

    grammar: str
    """The grammar in llguidance's serialised form (Lark source when ``tags`` is not empty)."""
    layout: Layout
    """Where text, free-text values and syntax lie (structure-safe steering, closing a structure)."""
    description: str
    tags: tuple[str, ...] = ()
    """Literal tags in the Lark source that a tokenizer may hold as special tokens (see :meth:`grammar_for`)."""

    def grammar_for(self, vocabulary: GrammarVocabulary) -> str:
        """The grammar for one tokenizer: each tag it holds as a special token is accepted as that token or as
        plain text (a grammar literal never matches a special token)."""
        if not self.tags:
            return self.grammar
        lark = self.grammar
        for tag in self.tags:
            token = vocabulary.special_ids.get(tag)
            if token is not None:
                lark = lark.replace(f'{_tag_rule(tag)}: "{tag}"', f'{_tag_rule(tag)}: <[{token}]> | "{tag}"')
        return llguidance.LLMatcher.grammar_from_lark(lark)

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any], *, what: str = "schema") -> Constraint:
        """A response that is one compact JSON value valid under ``schema`` (JSON Schema draft 2020-12 as far
        as the engine implements it). ``what`` names the argument in error messages."""
        checked = _checked_schema(schema, what)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(checked, defaults=_JSON_OPTIONS)
        _validate(grammar, what)
        return cls(grammar, JsonLayout(checked), f"JSON under {what}")

    @classmethod
    def json_object(cls) -> Constraint:
        """Any compact JSON object (OpenAI's ``json_object`` response format, LangChain's ``json_mode``)."""
        schema = {"type": "object"}
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
        return cls(grammar, JsonLayout({}), "a JSON object")

    @classmethod
    def lark(cls, grammar: str) -> Constraint:
        """A response in the language of a Lark grammar (llguidance's dialect, ``start`` rule first). Its
        structure is opaque: structure-safe steering places no nudge in it, and closing in budget is best
        effort."""
        if not isinstance(grammar, str) or not grammar.strip():
            raise ValueError("grammar: expected a non-empty Lark grammar")
        if len(grammar) > MAX_SCHEMA_CHARS:
            raise ValueError(f"grammar: {len(grammar)} characters, more than the {MAX_SCHEMA_CHARS} allowed")
        compiled = llguidance.LLMatcher.grammar_from_lark(grammar)
        _validate(compiled, "grammar")
        return cls(compiled, OpaqueLayout(), "a Lark grammar")

    @classmethod
    def for_tools(
        cls,
        tools: Sequence[Mapping[str, Any]],
        tool_choice: ToolChoice = "auto",
        tool_format: Literal["hermes", "llama3_json"] = "hermes",
        *,
        parallel: bool = True,
    ) -> Constraint | None:
        """Tool calls in ``tool_format`` whose names and arguments match ``tools`` (OpenAI tool dicts):
        ``auto`` allows plain text instead, ``required``/``any`` forces a call, a tool's name forces a call of
        that tool, ``none`` gives None (no constraint: the caller drops the tools); ``parallel``: several calls
        may follow one another. Hermes calls are ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``
        blocks, or one bare JSON call (small models often leave the tags out)."""
        from .tools import normalize_tools

        if tool_format not in _CALL_SEPARATOR:
            raise ValueError(f"tool_format: expected 'hermes' or 'llama3_json', got {tool_format!r}")
        if not isinstance(tool_choice, str):
            raise ValueError(
                f"tool_choice: expected 'auto', 'required', 'any', 'none' or a tool name, got {tool_choice!r}"
            )
        if tool_choice == "none":
            return None
        functions = [t["function"] for t in normalize_tools(tools)]
        if not functions:
            raise ValueError("tools: at least one tool is needed for tool_choice other than 'none'")
        names = [f["name"] for f in functions]
        if tool_choice not in ("auto", "required", "any"):
            if tool_choice not in names:
                raise ValueError(f"tool_choice: no tool named {tool_choice!r}; the tools are {', '.join(names)}")
            functions = [f for f in functions if f["name"] == tool_choice]
        key = _ARGUMENTS_KEY[tool_format]
        parameters = {
            f["name"]: _checked_schema(f.get("parameters") or {"type": "object"}, f"tools[{f['name']}].parameters")
            for f in functions
        }
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": name}, key: schema},
                "required": ["name", key],
                "additionalProperties": False,
            }
            for name, schema in parameters.items()
        ]
        call_schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
        call_schema = {**call_schema, "x-guidance": _JSON_OPTIONS}  # compact inside the Lark grammar too
        json_call = f"%json {json.dumps(call_schema, separators=(',', ':'))}"
        if tool_format == "hermes":
            rules = [
                'calls: tagged ("\\n" tagged)* | bare' if parallel else "calls: tagged | bare",
                f'tagged: open_tag "\\n" {json_call} "\\n" close_tag',
                f"bare: {json_call}",
                *(f'{_tag_rule(tag)}: "{tag}"' for tag in _TAGS),
            ]
            layout: Layout = HermesLayout(parameters, allow_text=tool_choice == "auto")
            text = r"TEXT: /[^{<\s][\s\S]*/"
        else:
            rules = ['calls: call (";" call)*' if parallel else "calls: call", f"call: {json_call}"]
            layout = Llama3JsonLayout(parameters, allow_text=tool_choice == "auto")
            text = r"TEXT: /[^{\s][\s\S]*/"
        start = "start: calls | TEXT" if tool_choice == "auto" else "start: calls"
        lark = "\n".join([start, *rules, *([text] if tool_choice == "auto" else [])])
        if len(lark) > MAX_SCHEMA_CHARS:
            raise ValueError(
                f"tools: their schemas take {len(lark)} characters, more than the {MAX_SCHEMA_CHARS} allowed"
            )
        _validate(llguidance.LLMatcher.grammar_from_lark(lark), "tools")
        forced = tool_choice not in ("auto", "required", "any")
        what = f"a call of {tool_choice}" if forced else f"tool calls ({tool_choice})"
        return cls(lark, layout, what, tags=_TAGS if tool_format == "hermes" else ())

    @classmethod
    def plain_text(cls, tool_format: Literal["hermes", "llama3_json"] = "hermes") -> Constraint:
        """Text that is not a tool call (it does not open with ``{``, nor with ``<`` in hermes format): an
        answer where the tools were offered."""
        first = "{<" if tool_format == "hermes" else "{"
        lark = f"start: TEXT\nTEXT: /[^{first}\\s][\\s\\S]*/"
        _validate(llguidance.LLMatcher.grammar_from_lark(lark), "plain_text")
        layout: Layout = HermesLayout({}, allow_text=True) if tool_format == "hermes" else Llama3JsonLayout({}, True)
        return cls(llguidance.LLMatcher.grammar_from_lark(lark), layout, "plain text (no tool call)")

    def start(self, vocabulary: GrammarVocabulary) -> ConstraintState:
        """A fresh matcher for one response."""
        return ConstraintState(self, vocabulary)


def _tag_rule(tag: str) -> str:
    return "close_tag" if tag.startswith("</") else "open_tag"


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMA_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_OPEN_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def _closed(schema: Any) -> Any:
    """``schema`` (a copy) with every object that lists ``properties`` but says nothing about other keys closed
    to those properties, as OpenAI's strict mode does: framework schemas (LangChain's, LlamaIndex's, pydantic's)
    leave objects open, and the grammar would then let a model invent keys. An object that allows other keys
    explicitly stays open."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMA_ONE:
        if isinstance(out.get(key), dict):
            out[key] = _closed(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed(sub) for sub in out[key]]
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _closed(out["additionalProperties"])
    if isinstance(out.get("properties"), dict) and not any(k in out for k in _OPEN_KEYS):
        out["additionalProperties"] = False
    return out


def _checked_schema(schema: Any, what: str) -> dict[str, Any]:
    if isinstance(schema, bool):
        schema = {} if schema else {"not": {}}
    if not isinstance(schema, Mapping):
        raise ValueError(f"{what}: expected a JSON schema (a dict), got {type(schema).__name__}")
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: not JSON-serialisable ({error})") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise ValueError(f"{what}: {len(text)} characters of JSON, more than the {MAX_SCHEMA_CHARS} allowed")
    try:
        import jsonschema
        from jsonschema.exceptions import SchemaError

        try:
            jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        except SchemaError as error:
            where = "/".join(str(p) for p in error.path)
            raise ValueError(
                f"{what}: not a valid JSON schema{' at ' + where if where else ''}: {error.message}"
            ) from None
    except ImportError:  # pragma: no cover - jsonschema is a dependency; the engine still checks
        pass
    return dict(_closed(json.loads(text)))


def _validate(grammar: str, what: str) -> None:
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(f"{what}: the grammar engine (llguidance) cannot compile it: {error.strip()}")


# ---------------------------------------------------------------------------------------------- one response
class ConstraintState:
    """The grammar's state along one response: it follows the response tokens (rolling back for refinements),
    masks logits, says where a position lies (text, free-text value, syntax) and keeps the structure closable
    within the token budget."""

    def __init__(self, constraint: Constraint, vocabulary: GrammarVocabulary) -> None:
        self.constraint = constraint
        self.vocabulary = vocabulary
        self.matcher = llguidance.LLMatcher(vocabulary.ll, constraint.grammar_for(vocabulary))
        if self.matcher.is_error():
            raise ValueError(f"constraint: the grammar engine cannot use it: {self.matcher.get_error()}")
        self.consumed: list[int] = []
        words = (vocabulary.vocab_size + 31) // 32
        self._bitmask = torch.full((1, words), -1, dtype=torch.int32)
        self._allowed: torch.Tensor | None = None
        self.seconds = 0.0
        """Time spent here (masks, closing checks): the grammar's cost to a response."""

    # ------------------------------------------------------------------ following the response
    def sync(self, tokens: Sequence[int]) -> None:
        """Make the matcher hold exactly ``tokens`` (the response so far): roll back what differs, feed the rest."""
        common = common_prefix_length(self.consumed, tokens)
        if common == len(self.consumed) == len(tokens):
            return
        if common < len(self.consumed):
            self.matcher.rollback(len(self.consumed) - common)
            del self.consumed[common:]
        new = list(tokens[common:])
        if new:
            fed = self.matcher.try_consume_tokens(new)
            if fed < len(new):
                self.matcher.rollback(fed)
                raise ConstraintError(
                    f"the grammar ({self.constraint.description}) refuses token {new[fed]} "
                    f"({self.vocabulary.text([new[fed]])!r}) after {self.vocabulary.text(self.consumed + new[:fed])!r}"
                )
            self.consumed.extend(new)
        self._allowed = None

    def allowed(self) -> torch.Tensor:
        """Boolean mask over the vocabulary of the tokens the grammar allows next."""
        if self._allowed is None:
            started = time.perf_counter()
            self._allowed = torch.from_numpy(self._mask_of(self.matcher))
            self.seconds += time.perf_counter() - started
        return self._allowed

    def _mask_of(self, matcher: llguidance.LLMatcher) -> np.ndarray:
        row = self._bitmask[0]
        matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        # Little-endian words, bit i of word w is token 32 * w + i: numpy unpacks that in microseconds.
        bits = np.unpackbits(row.numpy().view(np.uint8), bitorder="little")[: self.vocabulary.vocab_size]
        return bits.astype(bool)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with every token the grammar forbids at -inf (a copy)."""
        allowed = self.allowed().to(logits.device)
        size = logits.shape[-1]
        if size > allowed.numel():
            allowed = torch.cat([allowed, allowed.new_zeros(size - allowed.numel())])
        return logits.masked_fill(~allowed[:size], float("-inf"))

    # ------------------------------------------------------------------ where a position lies
    def position(self, tokens: Sequence[int]) -> Position:
        return self.constraint.layout.position(self.vocabulary.text(tokens))

    def steerable(self, tokens: Sequence[int]) -> Position | None:
        """Where the response ``tokens`` end, when a nudge may go there (text or a free-text value)."""
        at = self.position(tokens)
        return at if at.kind != "syntax" else None

    def stays_in_region(self, tokens: Sequence[int], region: Position, candidate: int) -> bool:
        """Whether ``candidate`` after ``tokens`` keeps the response in the same text run or string value."""
        after = self.position([*tokens, candidate])
        return after.kind == region.kind and after.region_start == region.region_start

    # ------------------------------------------------------------------ closing within the budget
    def closing_length(self, limit: int) -> int | None:
        """Tokens the shortest completion this module finds needs from here (None: more than ``limit``)."""
        return self._complete(self.matcher.deep_copy(), list(self.consumed), limit)[0]

    def within_budget(self, token: int, remaining: int) -> int:
        """``token`` when the structure can still be closed after it with the tokens left (``remaining``
        counts ``token`` itself); otherwise the next token of the shortest completion. Exact for JSON-based
        constraints; best effort for a Lark grammar."""
        started = time.perf_counter()
        try:
            return self._within_budget(token, remaining)
        finally:
            self.seconds += time.perf_counter() - started

    def _within_budget(self, token: int, remaining: int) -> int:
        if token in self.vocabulary.eos_token_ids:
            return token
        after = self.matcher.deep_copy()
        if after.consume_token(token):
            needed, _ = self._complete(after, [*self.consumed, token], remaining - 1)
            if needed is not None:
                return token
        _, first = self._complete(self.matcher.deep_copy(), list(self.consumed), remaining)
        return first if first is not None else token

    def _complete(self, matcher: llguidance.LLMatcher, tokens: list[int], limit: int) -> tuple[int | None, int | None]:
        """Follow the closing preferences from ``matcher`` until the grammar accepts: the tokens that took (None
        past ``limit``) and the first of them (an EOS id when the grammar accepts already)."""
        taken = 0
        first: int | None = None
        while not matcher.is_accepting():
            if taken >= limit or matcher.is_error():
                return None, first
            token = self._closing_token(matcher, tokens)
            if token is None or not matcher.consume_token(token):
                return None, first
            tokens.append(token)
            first = token if first is None else first
            taken += 1
        return taken, first if first is not None else min(self.vocabulary.eos_token_ids)

    def _closing_token(self, matcher: llguidance.LLMatcher, tokens: list[int]) -> int | None:
        forced = matcher.compute_ff_tokens()
        if forced:
            return int(forced[0])
        at = self.position(tokens)
        for text in _CLOSERS.get("string" if at.in_string else at.expect, ()):
            token = self.vocabulary.single_token(text)
            if token is not None and matcher.validate_tokens([token]) == 1:  # no full mask needed
                return token
        allowed = self._mask_of(matcher)
        if not allowed.any():
            return None
        # Otherwise the allowed token with the most bytes (it finishes a key or an enum value soonest).
        return int(np.where(allowed, self.vocabulary.byte_lengths, -1).argmax())
