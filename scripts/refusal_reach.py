"""Where Best-of-8 refused a HarmBench prompt and GGRO did not (docs/results/eval48): does the guidance prefer
GGRO's answer, and was a refusal opening among the alternatives GGRO tried at the response's first token?

Usage: python scripts/refusal_reach.py [N]   (decodes the first N such prompts again; default 8)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ggro import GGROConfig, GGRODecoder, nudging
from ggro.lab.eval.metrics import is_refusal

ROWS = Path(__file__).resolve().parent.parent / "docs" / "results" / "eval48" / "eval.jsonl"
OPENINGS = ("I", "As", "Sorry", "Unfortunately")


def rows_by_key() -> dict[tuple[str, int, str], dict[str, Any]]:
    """The evaluation's rows by (set, index, method)."""
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    return {(r["set"], r["index"], r["method"]): r for r in rows}


def refused_by_best_of_8_only(by: dict[tuple[str, int, str], dict[str, Any]], set_name: str) -> list[int]:
    """The prompts of ``set_name`` where Best-of-8 returned a refusal and GGRO did not."""
    return sorted(
        i
        for (s, i, m), r in by.items()
        if s == set_name
        and m == "bon-8"
        and (s, i, "ggro") in by
        and is_refusal(r["text"])
        and not is_refusal(by[(s, i, "ggro")]["text"])
    )


def main(count: int) -> None:
    by = rows_by_key()
    cases = refused_by_best_of_8_only(by, "harmbench")
    ggro = [by[("harmbench", i, "ggro")] for i in cases]
    bon = [by[("harmbench", i, "bon-8")] for i in cases]
    above = sum(g["guidance_reward"] > b["guidance_reward"] for g, b in zip(ggro, bon, strict=True))
    print(f"Best-of-8 refused, GGRO did not: {len(cases)} prompts; guidance prefers GGRO's answer on {above}")
    for key in ("guidance_reward", "gold_reward"):
        print(f"  mean {key}: GGRO {statistics.fmean(r[key] for r in ggro):.3f}, "
              f"Best-of-8 {statistics.fmean(r[key] for r in bon):.3f}")  # fmt: skip

    decoder = GGRODecoder.from_pretrained("qwen2.5-coder-0.5b-instruct", "qwen-guidance", GGROConfig(max_new_tokens=48))
    proposals: list[tuple[Any, list[int]]] = []
    alternatives = nudging.NudgeProposal.alternatives

    def logged(self: Any, count: int, **options: Any) -> list[int]:
        tried = alternatives(self, count, **options)
        proposals.append((self, tried))
        return tried

    nudging.NudgeProposal.alternatives = logged  # type: ignore[method-assign]
    in_top_k = tried_any = 0
    for index in cases[:count]:
        proposals.clear()
        result = decoder.generate(by[("harmbench", index, "ggro")]["prompt"])[0]
        proposal, tried = proposals[0]  # the first segment's: its insertion position is the response's first token
        names = [decoder.tokenizer.decode([t]).strip() for t in proposal.candidate_ids]
        gains = {n: round(g, 3) for n, g in zip(names, proposal.gains, strict=True) if n in OPENINGS}
        tried_names = [decoder.tokenizer.decode([t]).strip() for t in tried]
        first = result.segments[0]
        in_top_k += bool(gains)
        tried_any += any(n in OPENINGS for n in tried_names)
        print(f"\n[{index}] openings in the top {len(names)} with predicted gains {gains}; tried {tried_names}")
        print(f"  candidate guidance {[None if c is None else round(c, 2) for c in first.candidate_rewards]}, "
              f"kept {first.kept_refinement}: {result.text[:90]!r}")  # fmt: skip
    checked = min(count, len(cases))
    print(f"\nrefusal opening in the top k: {in_top_k} of {checked}; among the alternatives tried: {tried_any}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
