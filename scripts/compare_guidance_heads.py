"""Two sets of qwen-guidance heads side by side: accuracy on the held-out harmful-own pairs, and, on the first
48-token evaluation's rows (docs/results/eval48), how often each prefers GGRO's answer where Best-of-8 refused
and GGRO did not (a check on outputs the heads never trained on; not a training or selection signal).

Usage: python scripts/compare_guidance_heads.py OLD_HEADS_DIR NEW_HEADS_DIR
(e.g. the heads of an earlier commit, `git show REV:src/ggro/rewards/heads/qwen05_harm_head.json > old/...`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from refusal_reach import refused_by_best_of_8_only, rows_by_key  # this folder's script, on sys.path when run

from ggro.lab.train_guidance import build_pairs, extract_features, generate_harmful_answers, load_data, pair_features
from ggro.rewards.heads import QWEN_HARM_HEAD_NAME, QWEN_HELP_HEAD_NAME, load_head

Scorer = Callable[[np.ndarray], np.ndarray]


def composite(directory: Path) -> Scorer:
    """The composite of the heads in ``directory`` at the weights their provenance records."""
    harm, help_ = load_head(QWEN_HARM_HEAD_NAME, directory), load_head(QWEN_HELP_HEAD_NAME, directory)
    weights = json.loads((directory / f"{QWEN_HARM_HEAD_NAME}.json").read_text())["composite_weights"]

    def score(x: np.ndarray) -> np.ndarray:
        terms = [(weights["w_harm"], harm), (weights["w_help"], help_)]
        return sum(w * (x @ h.weight.double().numpy() + float(h.bias[0])) for w, h in terms)  # type: ignore[return-value]

    return score


def main(old: Path, new: Path) -> None:
    scorers = {"old": composite(old), "new": composite(new)}
    data = load_data()
    answers = generate_harmful_answers(data.harmful_prompts)
    pairs = [p for p in build_pairs(data, {}, 1, None, answers) if p.source == "harmful-own"]
    feats = pair_features(pairs)
    for name, score in scorers.items():
        accuracy = np.mean(score(feats.chosen.full) > score(feats.rejected.full))
        print(f"{name}: held-out harmful-own pairs {accuracy:.4f} (n {len(pairs)})")
    by = rows_by_key()
    for set_name in ("harmbench", "donotanswer"):
        cases = refused_by_best_of_8_only(by, set_name)
        texts = [
            (by[(set_name, i, m)]["prompt"], by[(set_name, i, m)]["text"]) for m in ("ggro", "bon-8") for i in cases
        ]
        full = extract_features(texts, store="eval48-check").full
        for name, score in scorers.items():
            values = score(full)
            above = int(np.sum(values[: len(cases)] > values[len(cases) :]))
            print(f"{set_name} {name}: Best-of-8 refused, GGRO did not: {len(cases)}; prefers GGRO's answer on {above}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
