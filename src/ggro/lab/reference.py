"""Run the authors'-release fixtures (``shared/fixtures/reference``) through the reference preset."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import GGROConfig
from ..decoder import GGRODecoder
from ..events import GGROResult

__all__ = ["CaseReport", "check_case", "reference_config", "run_reference_check"]

REWARD_TOLERANCE = 1e-3


@dataclass
class CaseReport:
    case_id: str
    passed: bool
    seconds: float
    problems: list[str] = field(default_factory=list)
    summary: str = ""


def reference_config(case: dict[str, Any]) -> GGROConfig:
    c = case["config"]
    if case["kind"] == "greedy_baseline":
        # Plain `generate`: one candidate per segment and no text round trip between segments.
        return GGROConfig.reference(
            refinement_steps=1, max_new_tokens=c["max_new_tokens"], retokenize_between_segments=False
        )
    return GGROConfig.reference(
        entropy_threshold=c["entropy_threshold"],
        refinement_steps=c["num_refinement_steps"],
        nudge_top_k=c["nudge_top_k"],
        nudge_temperature=c["nudge_temperature"],
        nudge_selection=c["nudge_selection"],
        max_new_tokens=c["max_new_tokens"],
        seed=c.get("seed"),
    )


def _response_ids_with_eos(result: GGROResult, eos: int) -> list[int]:
    return result.token_ids + ([eos] if result.finish_reason == "stop" else [])


def check_case(decoder: GGRODecoder, case: dict[str, Any]) -> CaseReport:
    cfg = reference_config(case)
    prompt_ids = case["prompt"]["prompt_token_ids"]
    (result,) = decoder.generate_ids([prompt_ids], config=cfg)
    out = case["output"]
    eos = decoder.tokenizer.eos_token_id
    problems: list[str] = []
    ours = _response_ids_with_eos(result, eos)
    if ours != out["response_token_ids"]:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, out["response_token_ids"], strict=False)) if a != b),
            min(len(ours), len(out["response_token_ids"])),
        )
        problems.append(
            f"response ids differ from token {first} (ours {len(ours)} tokens, reference "
            f"{len(out['response_token_ids'])})"
        )
    expected_reward = out["final_reward"]
    final_reward = result.final_reward
    if case["kind"] == "greedy_baseline":
        # The release scores plain `generate` output through its text: decode, re-tokenise, pool before EOS.
        tok = decoder.tokenizer
        scored = tok(tok.decode(prompt_ids + ours, skip_special_tokens=False), add_special_tokens=False)["input_ids"]
        while len(scored) > 1 and scored[-1] in decoder.eos_token_ids:
            scored = scored[:-1]
        final_reward = decoder.reward.score([scored])[0]
    if final_reward is None or not math.isclose(final_reward, expected_reward, abs_tol=REWARD_TOLERANCE):
        problems.append(f"final reward {final_reward} vs {expected_reward}")
    summary = f"{len(ours)} tokens, final reward {final_reward:.4f}" if final_reward is not None else ""
    if case["kind"] == "ggro":
        p0 = len(prompt_ids)
        boundaries = [s.start_position + p0 for s in result.segments[1:]] + [p0 + len(result.token_ids)]
        if boundaries != out["segment_boundaries"]:
            problems.append(f"segment boundaries {boundaries} vs {out['segment_boundaries']}")
        kept = [s.kept_refinement for s in result.segments]
        ref_kept = [s["kept_refinement"] for s in case["segments"]]
        if kept != ref_kept:
            problems.append(f"kept refinements {kept} vs {ref_kept}")
        nudges = sum(1 for k in kept if k > 0)
        if nudges != out["num_nudges"]:
            problems.append(f"nudges {nudges} vs {out['num_nudges']}")
        for seg, ref in zip(result.segments, case["segments"], strict=False):
            ref_rewards = [r["reward"] for r in ref["refinements"] if r["repeat_of"] is None]
            ours_r = seg.candidate_rewards
            if len(ours_r) != len(ref_rewards) or any(
                a is None or not math.isclose(a, b, abs_tol=REWARD_TOLERANCE)
                for a, b in zip(ours_r, ref_rewards, strict=False)
            ):
                problems.append(f"segment {seg.segment_index}: candidate rewards {ours_r} vs {ref_rewards}")
                break
        summary = (
            f"{len(result.segments)} segments, {nudges} nudges, {len(ours)} tokens, final reward "
            f"{result.final_reward:.4f} (ref {expected_reward:.4f})"
        )
    return CaseReport(case["case_id"], not problems, result.timing.seconds, problems, summary)


def run_reference_check(
    directory: Path, decoder: GGRODecoder | None = None, on_report: Callable[[CaseReport], None] | None = None
) -> list[CaseReport]:
    """Every ``case_*.json`` in ``directory``, on the embedded policy and the seeded reference RM head."""
    files = sorted(Path(directory).glob("case_*.json"))
    if not files:
        raise FileNotFoundError(f"no case_*.json files in {directory}")
    if decoder is None:
        from ..loading import REFERENCE_REWARD, load_policy, load_reward

        # The fixtures ran the policy with eager attention (the RM with the default).
        model, tokenizer = load_policy(None, attn_implementation="eager")
        decoder = GGRODecoder(model, tokenizer, load_reward(REFERENCE_REWARD), GGROConfig.reference())
    reports = []
    for f in files:
        case = json.loads(f.read_text(encoding="utf-8"))
        reports.append(check_case(decoder, case))
        if on_report is not None:
            on_report(reports[-1])
    return reports
