"""Run methods over prompt sets and append one JSON line per response: resumable, seeded, with a progress bar.

A method is named by a string: ``greedy``; ``bon-N`` (Best-of-N); ``args`` or ``args-kK-wW``; ``ggro`` or
``ggro-rR`` / ``ggro-rR-tT`` (R refinement steps, entropy threshold T). Each prompt set has a gold judge
``judge(prompts, responses) -> scores`` that never steers (the MiniLM harm probe, VADER for continuations).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..decoder import GGRODecoder
from .methods import MethodOutput, args_decode, best_of_n, greedy

__all__ = ["Judge", "Method", "parse_method", "read_rows", "run_eval"]

Judge = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class Method:
    """A named decoding method: ``run(decoder, prompt, max_new_tokens, seed)``."""

    name: str
    run: Callable[[GGRODecoder, str, int, int], MethodOutput]


def _ggro(refinement_steps: int, entropy_threshold: float | None) -> Callable[..., MethodOutput]:
    def run(decoder: GGRODecoder, prompt: str, max_new_tokens: int, seed: int) -> MethodOutput:
        options: dict[str, Any] = {"refinement_steps": refinement_steps, "seed": seed}
        if entropy_threshold is not None:
            options["entropy_threshold"] = entropy_threshold
        result = decoder.generate([prompt], max_new_tokens=max_new_tokens, **options)[0]
        return MethodOutput(
            text=result.text,
            token_ids=list(result.token_ids),
            prompt_token_ids=list(result.prompt_token_ids),
            guidance_reward=result.final_reward,
            policy_forward_passes=result.usage.policy_forward_passes,
            reward_calls=result.usage.reward_calls,
            seconds=result.timing.seconds,
        )

    return run


def parse_method(name: str) -> Method:
    """The method a name stands for (see the module docstring); a clear error for anything else."""
    if name == "greedy":
        return Method(name, lambda d, p, m, s: greedy(d, p, m))
    if match := re.fullmatch(r"bon-(\d+)", name):
        n = int(match.group(1))
        return Method(name, lambda d, p, m, s: best_of_n(d, p, n, m, seed=s))
    if match := re.fullmatch(r"args(?:-k(\d+)-w([\d.]+))?", name):
        k = int(match.group(1) or 10)
        w = float(match.group(2) or 1.0)
        return Method(name, lambda d, p, m, s: args_decode(d, p, m, k=k, w=w))
    if match := re.fullmatch(r"ggro(?:-r(\d+))?(?:-t([\d.]+))?", name):
        steps = int(match.group(1) or 8)
        threshold = float(match.group(2)) if match.group(2) else None
        return Method(name, _ggro(steps, threshold))
    raise ValueError(
        f"method: unknown {name!r}; allowed: 'greedy', 'bon-N', 'args' or 'args-kK-wW', 'ggro', 'ggro-rR', 'ggro-rR-tT'"
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
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every method on the first ``limit`` prompts of every set, appending one row per response to
    ``out`` (JSONL). Rows already there (same set, prompt index, method and seed) are skipped, so an
    interrupted run resumes where it stopped. Returns all rows of ``out``."""
    parsed = [parse_method(m) for m in methods]
    missing = sorted(set(prompt_sets) - set(judges))
    if missing:
        raise ValueError(f"judges: no gold judge for prompt set(s) {missing}")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["set"], r["index"], r["method"], r["seed"]) for r in read_rows(out)}
    todo = [
        (set_name, index, prompt, method)
        for set_name, prompts in prompt_sets.items()
        for index, prompt in enumerate(prompts[:limit])
        for method in parsed
        if (set_name, index, method.name, seed) not in done
    ]
    from tqdm.auto import tqdm

    with out.open("a", encoding="utf-8") as sink:
        if out.stat().st_size and not out.read_bytes().endswith(b"\n"):
            sink.write("\n")  # end a line torn by an interrupted run, so the next row starts clean
        for set_name, index, prompt, method in tqdm(todo, desc="eval", disable=not progress):
            output = method.run(decoder, prompt, max_new_tokens, seed)
            texts = [output.text, *output.candidate_texts]
            gold = judges[set_name]([prompt] * len(texts), texts)
            row = {
                "set": set_name,
                "index": index,
                "method": method.name,
                "seed": seed,
                "prompt": prompt,
                "text": output.text,
                "guidance_reward": output.guidance_reward,
                "gold_reward": gold[0],
                "candidates": output.candidates,
                "candidate_guidance_rewards": list(output.candidate_rewards),
                "candidate_gold_rewards": gold[1:],
                "response_tokens": len(output.token_ids),
                "policy_forward_passes": output.policy_forward_passes,
                "reward_calls": output.reward_calls,
                "seconds": output.seconds,
                "max_new_tokens": max_new_tokens,
            }
            sink.write(json.dumps(row) + "\n")
            sink.flush()  # a killed run loses at most the response in progress
    return read_rows(out)
