"""Run methods over prompt sets and append one JSON line per response: resumable, seeded, with a progress bar.

A method is named by a string: ``greedy``; ``bon-N`` (Best-of-N); ``args`` or ``args-kK-wW``; ``ggro`` or
``ggro-rR`` / ``ggro-rR-tT`` (R refinement steps, entropy threshold T). Each prompt set has a gold judge
``judge(prompts, responses) -> scores`` that never steers (the MiniLM harm probe, VADER for continuations).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import GGROConfig
from ...decoder import GGRODecoder
from .methods import BON_SAMPLING, MethodOutput, args_decode, best_of_n_batch, greedy_batch
from .metrics import PeakMemory

__all__ = [
    "Judge",
    "Method",
    "best_of_n_size",
    "ggro_speed_variant",
    "ggro_variant",
    "model_identity",
    "parse_method",
    "read_rows",
    "run_eval",
]

Judge = Callable[[list[str], list[str]], list[float]]


RunBatch = Callable[[GGRODecoder, list[str], int, int], list[MethodOutput]]


@dataclass(frozen=True)
class Method:
    """A named decoding method: ``run(decoder, prompts, max_new_tokens, seed)`` gives one output per prompt.
    ``batched`` methods decode the prompts together (each output's seconds is its share of the batch)."""

    name: str
    run: RunBatch
    batched: bool = True


def _ggro(refinement_steps: int, entropy_threshold: float | None, **speed: Any) -> RunBatch:
    def run(decoder: GGRODecoder, prompts: list[str], max_new_tokens: int, seed: int) -> list[MethodOutput]:
        options: dict[str, Any] = {"refinement_steps": refinement_steps, "seed": seed, **speed}
        if entropy_threshold is not None:
            options["entropy_threshold"] = entropy_threshold
        started = time.perf_counter()
        results = decoder.generate(list(prompts), max_new_tokens=max_new_tokens, **options)
        share = (time.perf_counter() - started) / len(prompts)
        return [
            MethodOutput(
                text=result.text,
                token_ids=list(result.token_ids),
                prompt_token_ids=list(result.prompt_token_ids),
                guidance_reward=result.final_reward,
                policy_forward_passes=result.usage.policy_forward_passes,
                reward_calls=result.usage.reward_calls,
                seconds=share,
            )
            for result in results
        ]

    return run


def best_of_n_size(name: str) -> int | None:
    """N of a Best-of-N method name (``bon-N``); None for any other name."""
    match = re.fullmatch(r"bon-(\d+)", name)
    return int(match.group(1)) if match else None


def ggro_variant(name: str) -> tuple[int, float | None] | None:
    """(refinement steps, entropy threshold) of a GGRO method name: ``ggro`` has the decoder's default steps, and a
    threshold of None means the decoder's own. None for any other name."""
    match = re.fullmatch(r"ggro(?:-r(\d+))?(?:-t([\d.]+))?", name)
    if not match:
        return None
    steps = int(match.group(1)) if match.group(1) else GGROConfig.model_fields["refinement_steps"].default
    return steps, float(match.group(2)) if match.group(2) else None


def ggro_speed_variant(name: str) -> dict[str, Any] | None:
    """The speed options of a GGRO method name (default steps and threshold): ``ggro-parallel`` or
    ``ggro-sequential`` (that ``refinement``), ``ggro-xG`` (``early_exit_gain=G``), or both
    (``ggro-parallel-xG``). None for any other name."""
    match = re.fullmatch(r"ggro(?:-(parallel|sequential))?(?:-x([\d.]+))?", name)
    if not match or not (match.group(1) or match.group(2)):
        return None
    options: dict[str, Any] = {}
    if match.group(1):
        options["refinement"] = match.group(1)
    if match.group(2):
        options["early_exit_gain"] = float(match.group(2))
    return options


def parse_method(name: str) -> Method:
    """The method a name stands for (see the module docstring); a clear error for anything else."""
    if name == "greedy":
        return Method(name, lambda d, ps, m, s: greedy_batch(d, ps, m))
    if (n := best_of_n_size(name)) is not None:
        return Method(name, lambda d, ps, m, s: best_of_n_batch(d, ps, n, m, seed=s))
    if match := re.fullmatch(r"args(?:-k(\d+)-w([\d.]+))?", name):
        k = int(match.group(1) or 10)
        w = float(match.group(2) or 1.0)
        # One prompt at a time: token-level reward guidance is not batched across prompts here.
        return Method(name, lambda d, ps, m, s: [args_decode(d, p, m, k=k, w=w) for p in ps], batched=False)
    if (variant := ggro_variant(name)) is not None:
        return Method(name, _ggro(*variant))
    if (speed := ggro_speed_variant(name)) is not None:
        return Method(name, _ggro(GGROConfig.model_fields["refinement_steps"].default, None, **speed))
    raise ValueError(
        f"method: unknown {name!r}; allowed: 'greedy', 'bon-N', 'args' or 'args-kK-wW', 'ggro', 'ggro-rR', "
        "'ggro-rR-tT', 'ggro-parallel', 'ggro-sequential', 'ggro-xG', 'ggro-parallel-xG'"
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows written so far (a torn last line, from an interrupted run, is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


PER_METHOD_OPTIONS = ("max_new_tokens", "seed", "refinement_steps", "entropy_threshold")
"""GGROConfig fields a run sets per method (from its name) or for every method (budget, seed): rows record them
on their own; the decoder's other options are part of the rows' identity."""


def model_identity(decoder: GGRODecoder) -> dict[str, Any]:
    """The policy, guidance reward and GGRO options every row records (``ggro_options``: the decoder's options
    that differ from the default preset, None when none do; ``ggro_refinement``: the refinement order that
    ``ggro`` means, recorded on its own because the default changed from sequential to parallel). A local
    policy is named by its folder, so a results file made on one machine resumes on another. ``bon_sampling``:
    Best-of-N's sampling settings (temperature 1 without truncation before issue 16, which rows lack)."""
    name = str(decoder.policy.name_or_path)
    default = GGROConfig().model_dump()
    changed = {
        key: value
        for key, value in decoder.config.model_dump().items()
        if key not in PER_METHOD_OPTIONS and value != default[key]
    }
    return {
        "policy": Path(name).name if Path(name).is_absolute() else name,
        "reward": decoder.reward.name,
        "ggro_options": changed or None,
        "ggro_refinement": decoder.config.refinement,
        "bon_sampling": dict(BON_SAMPLING),
    }


def run_eval(
    decoder: GGRODecoder,
    prompt_sets: Mapping[str, Sequence[str]],
    methods: Sequence[str],
    judges: Mapping[str, Judge],
    out: Path,
    *,
    max_new_tokens: int,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    gold_names: Mapping[str, str] | None = None,
    secondary: Mapping[str, Mapping[str, Judge]] | None = None,
    judge_candidates: bool = True,
) -> list[dict[str, Any]]:
    """Run every method on the first ``limit`` prompts of every set, appending one row per response to
    ``out`` (JSONL). ``gold_names``: the name of each set's gold judge, recorded as ``gold_judge`` (rows of a
    set judged by another are refused rather than mixed); ``secondary``: ``{column: {set: judge}}``, further
    judges of each response's text, recorded under ``column``. Rows already there (same set, prompt index,
    method, seed and budget) are skipped, so an interrupted run resumes where it stopped. Batched methods
    decode ``batch_size`` prompts of a set together; each row records its batch size, the peak memory of its
    batch and the models (:func:`model_identity`); a file holding rows of other models is refused rather than
    mixed. ``judge_candidates=False``: only the returned responses get a gold score (``candidate_gold_rewards``
    is empty, so the report has no pool coverage): Best-of-16 under an LLM judge otherwise costs 17 judge calls a
    prompt. Returns all rows of ``out``."""
    parsed = [parse_method(m) for m in methods]
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    missing = sorted(set(prompt_sets) - set(judges))
    if missing:
        raise ValueError(f"judges: no gold judge for prompt set(s) {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    identity = model_identity(decoder)
    existing = read_rows(out)
    other = next((r for r in existing if {key: r.get(key) for key in identity} != identity), None)
    if other is not None:
        raise ValueError(
            f"out: {out} holds rows made with policy {other.get('policy')!r} and reward {other.get('reward')!r}, "
            f"not {identity['policy']!r} and {identity['reward']!r} (GGRO options there: "
            f"{other.get('ggro_options')!r} with refinement {other.get('ggro_refinement')!r}, here: "
            f"{identity['ggro_options']!r} with refinement {identity['ggro_refinement']!r}; Best-of-N sampling "
            f"there: {other.get('bon_sampling')!r}, here: {identity['bon_sampling']!r}); write to another file "
            "(ggro eval --out-dir)"
        )
    if gold_names is not None:
        judged = next(
            (r for r in existing if r["set"] in gold_names and r.get("gold_judge") != gold_names[r["set"]]), None
        )
        if judged is not None:
            raise ValueError(
                f"out: {out} holds {judged['set']!r} rows judged by {judged.get('gold_judge')!r}, not "
                f"{gold_names[judged['set']]!r}; write to another file (ggro eval --out-dir) or choose that judge "
                "(ggro eval --gold)"
            )
    done = {(r["set"], r["index"], r["method"], r["seed"], r["max_new_tokens"]) for r in existing}
    # Prompt-index windows outermost, then sets, then methods: a run stopped early still covers every
    # method and set on the same first prompts.
    chunks: list[tuple[str, Method, list[tuple[int, str]]]] = []
    longest = max((len(prompts[:limit]) for prompts in prompt_sets.values()), default=0)
    for window in range(0, longest, batch_size):
        for set_name, prompts in prompt_sets.items():
            for method in parsed:
                pending = [
                    (index, prompts[index])
                    for index in range(window, min(window + batch_size, len(prompts[:limit])))
                    if (set_name, index, method.name, seed, max_new_tokens) not in done
                ]
                size = batch_size if method.batched else 1
                chunks += [(set_name, method, pending[i : i + size]) for i in range(0, len(pending), size)]
    from tqdm.auto import tqdm

    with (
        out.open("a", encoding="utf-8") as sink,
        tqdm(total=sum(len(c[2]) for c in chunks), desc="eval", unit="response", disable=not progress) as bar,
    ):
        if out.stat().st_size and not out.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end a line torn by an interrupted run, so the next row starts clean
        for set_name, method, items in chunks:
            bar.set_postfix_str(f"{set_name} {method.name}")
            prompts_now = [prompt for _, prompt in items]
            with PeakMemory() as memory:
                outputs = method.run(decoder, prompts_now, max_new_tokens, seed)
            # One judge call per batch (an LLM judge batches its forward passes): each response with its
            # candidates, then the secondary judges on the responses.
            texts = [[output.text, *(output.candidate_texts if judge_candidates else [])] for output in outputs]
            pairs = [(prompt, text) for (_, prompt), group in zip(items, texts, strict=True) for text in group]
            flat = judges[set_name]([p for p, _ in pairs], [t for _, t in pairs]) if pairs else []
            golds, start = [], 0
            for group in texts:
                golds.append(flat[start : start + len(group)])
                start += len(group)
            extra = {
                column: by_set[set_name](prompts_now, [output.text for output in outputs])
                for column, by_set in (secondary or {}).items()
                if set_name in by_set
            }
            for position, ((index, prompt), output) in enumerate(zip(items, outputs, strict=True)):
                gold = golds[position]
                extra_judges = {column: values[position] for column, values in extra.items()}
                row = {
                    "set": set_name,
                    "index": index,
                    "method": method.name,
                    "seed": seed,
                    "prompt": prompt,
                    "text": output.text,
                    "guidance_reward": output.guidance_reward,
                    "gold_reward": gold[0],
                    **({"gold_judge": gold_names[set_name]} if gold_names and set_name in gold_names else {}),
                    **extra_judges,
                    "candidates": output.candidates,
                    "candidate_guidance_rewards": list(output.candidate_rewards),
                    "candidate_gold_rewards": gold[1:],
                    "response_tokens": len(output.token_ids),
                    "policy_forward_passes": output.policy_forward_passes,
                    "reward_calls": output.reward_calls,
                    "seconds": output.seconds,
                    "batch_size": len(items),
                    "peak_memory_mb": memory.peak_mb,
                    "max_new_tokens": max_new_tokens,
                    **identity,
                }
                sink.write(json.dumps(row) + "\n")
            sink.flush()  # a killed run loses at most the batch in progress
            bar.update(len(items))
    return read_rows(out)
