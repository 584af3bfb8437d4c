"""Train the default guidance reward head (SmolLM2) and the gold judge's probe (MiniLM) on pyrit's harm data.

Run ``python -m ggro.lab.train_head`` (or call :func:`main`). It

1. reads the human-scored harm rows of ``pyrit==1.1.0`` (:mod:`ggro.lab.harm_data`) and splits the
   390 objectives 50/50 (seeded, balanced by rows per category): the guidance head may only use the first
   half, the gold probe only the second;
2. extracts features (cached under ``<cache>/features/``, so reruns take seconds):

   * guidance: SmolLM2-135M-Instruct's final normed hidden state (``model.model(...).last_hidden_state``)
     averaged over the response tokens, for the whole response and for its first 8/16/32/64 tokens. The
     input is rendered exactly as the decoder feeds the RM: the chat template's generation prompt for the
     objective (``apply_chat_template(..., add_generation_prompt=True)``, tokenized without special
     tokens), then the response tokenized without special tokens, no end-of-turn token. One unpadded
     forward pass per row gives every prefix (the model is causal, so position t does not see t+1), and
     no pad/eos logic can drop a token;
   * gold: all-MiniLM-L6-v2 sentence embeddings of (objective, response) (:mod:`ggro.lab.gold`);

3. fits ridge regression of the reward target ``1 - harm`` on standardized features (the guidance head on
   whole responses *and* their prefixes, each prefix labelled with its response's score), choosing the
   ridge strength by an inner 5-fold cross-validation by objective (mean squared error); the
   standardization is folded into one weight vector and bias on the raw pooled features;
4. reports held-out figures over K folds by objective inside each half, then fits on the whole half and
   writes ``heads/<name>.safetensors`` + ``heads/<name>.json``. The held-out figures of the final heads on
   the *other* half are reported too (each half is entirely unseen by the other's head).

Metrics: Spearman between the reward and ``1 - harm``; ROC AUC of "harmful" (mean human harm >= 0.5) vs
the rest, ranking by ``-reward`` (equivalently: how often a harmless response outranks a harmful one).
A k-token prefix metric uses the first k response tokens, or the whole response when it is shorter (what
the RM sees at that point of decoding), labelled with the whole response's score.

Everything is deterministic for a given command: splits come from seeded NumPy generators, ridge has a
closed form, and the feature passes are plain inference.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .._compat import cache_kwargs, new_cache
from ..assets import POLICY_GGUF_SHA256, POLICY_PACKAGE, POLICY_VERSION, POLICY_WHEEL_SHA256, cache_root
from ..rewards.heads import GOLD_PROBE_NAME, GUIDANCE_HEAD_NAME, HEADS_DIR, LinearHead, save_head
from .harm_data import (
    HARM_PREFIX,
    PYRIT,
    HarmRow,
    benign_answered_pairs,
    load_harm_rows,
    load_refusal_rows,
    objective_folds,
    partition_objectives,
    pyrit_wheel,
)

__all__ = [
    "ALPHAS",
    "PREFIX_LENGTHS",
    "Features",
    "Metrics",
    "RidgeHead",
    "auc",
    "cross_validate",
    "extract_minilm_features",
    "extract_smollm_features",
    "fit_ridge",
    "main",
    "render_ids",
    "response_mean_features",
    "select_alpha",
    "shared_prompt_features",
    "spearman",
]

Array = npt.NDArray[np.float64]

PREFIX_LENGTHS = (8, 16, 32, 64)
ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-1.0, 4.01, 0.5))
K_FOLDS = 5
INNER_FOLDS = 5
SPLIT_SEED = 0
CV_SEED = 1
HARMFUL_THRESHOLD = 0.5
FEATURE_FORMAT = 1
CANNED_REFUSAL = "I'm sorry, but I can't help with that request."

GUIDANCE_THRESHOLDS = {"spearman_full": 0.55, "auc_full": 0.78, "auc_prefix32": 0.70}


# --------------------------------------------------------------------------------------------
# Metrics.
# --------------------------------------------------------------------------------------------


def _rank(values: Array) -> Array:
    """Ranks 1..n with ties averaged."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = 0.5 * (start + stop - 1) + 1.0
        start = stop
    return ranks


def spearman(a: Sequence[float] | Array, b: Sequence[float] | Array) -> float:
    """Spearman rank correlation (ties averaged); nan when either side is constant."""
    x, y = _rank(np.asarray(a, dtype=np.float64)), _rank(np.asarray(b, dtype=np.float64))
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} vs {len(y)} values")
    x, y = x - x.mean(), y - y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else float("nan")


def auc(scores: Sequence[float] | Array, positive: Sequence[bool] | npt.NDArray[np.bool_]) -> float:
    """ROC AUC of ``scores`` for the ``positive`` class (Mann-Whitney, ties count half); nan if one class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _rank(s)
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclasses.dataclass(frozen=True)
class Metrics:
    spearman: float
    """Spearman(reward, 1 - harm)."""
    auc: float
    """AUC of -reward for harm >= 0.5."""
    n: int

    @classmethod
    def of(cls, reward: Array, harm: Array) -> Metrics:
        return cls(spearman(reward, 1.0 - harm), auc(-reward, harm >= HARMFUL_THRESHOLD), len(reward))


# --------------------------------------------------------------------------------------------
# Ridge head.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RidgeHead:
    """Ridge fit folded onto raw features: ``reward = weight · x + bias``."""

    weight: Array
    bias: float
    alpha: float

    def __call__(self, x: Array) -> Array:
        return np.asarray(x, dtype=np.float64) @ self.weight + self.bias

    def to_linear_head(self, meta: dict[str, Any]) -> LinearHead:
        return LinearHead(
            torch.from_numpy(self.weight.astype(np.float32)), torch.tensor([self.bias], dtype=torch.float32), meta
        )


def fit_ridge(x: Array, y: Array, alphas: Sequence[float]) -> list[RidgeHead]:
    """Ridge regressions of ``y`` on standardized ``x`` (one per alpha), folded onto raw features.

    Standardizing makes one alpha grid fit every feature scale; folding ``w_s / sd`` and
    ``mean(y) - w · mean(x)`` gives a head that applies to the raw pooled feature directly.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) < 2:
        raise ValueError(f"fit_ridge: need x [n, d] and y [n] with n >= 2, got {x.shape} and {y.shape}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a constant feature carries no signal; keep it out of the fit
    z = (x - mean) / scale
    y_mean = float(y.mean())
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    projected = u.T @ (y - y_mean)
    heads = []
    for alpha in alphas:
        w_std = vt.T @ (s / (s * s + alpha) * projected)
        weight = w_std / scale
        heads.append(RidgeHead(weight, float(y_mean - weight @ mean), float(alpha)))
    return heads


# --------------------------------------------------------------------------------------------
# Features.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Features:
    """Pooled features of N responses: whole response and k-token prefixes."""

    full: Array
    """[N, d]"""
    prefixes: dict[int, Array]
    """k -> [N, d]: mean over the first min(k, n_tokens) response tokens."""
    n_tokens: npt.NDArray[np.int64]
    """[N] response lengths in tokens."""

    def at(self, k: int | None) -> Array:
        """Features seen after k response tokens (``None``: the whole response)."""
        return self.full if k is None else self.prefixes[k]

    def design(self, index: Sequence[int] | npt.NDArray[np.int64], target: Array) -> tuple[Array, Array]:
        """Training matrix for responses ``index``: the whole response, plus each prefix shorter than it."""
        index = np.asarray(index, dtype=np.int64)
        xs, ys = [self.full[index]], [target[index]]
        for k, values in sorted(self.prefixes.items()):
            keep = index[self.n_tokens[index] > k]
            xs.append(values[keep])
            ys.append(target[keep])
        return np.concatenate(xs), np.concatenate(ys)


def render_ids(tokenizer: Any, objective: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) exactly as the decoder feeds the RM (no special tokens added, no end of turn)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": objective}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return prompt_ids, response_ids


@torch.inference_mode()
def response_mean_features(
    backbone: Any, prompt_ids: Sequence[int], response_ids: Sequence[int], prefix_lengths: Sequence[int]
) -> tuple[Array, dict[int, Array]]:
    """Mean final hidden state over all response tokens, and over the first k of them for each k.

    ``backbone`` is the base model (``LlamaModel``; the causal LM's ``.model``), whose
    ``last_hidden_state`` is the final normed hidden state. One unpadded forward pass serves every prefix.
    """
    if not response_ids:
        raise ValueError("response_mean_features: the response has no tokens")
    device = next(backbone.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(response_ids)], dtype=torch.long, device=device)
    hidden = backbone(input_ids=ids).last_hidden_state[0, len(prompt_ids) :].double().cpu()
    running = hidden.cumsum(dim=0).numpy()
    n = len(response_ids)
    prefixes = {k: running[min(k, n) - 1] / min(k, n) for k in prefix_lengths}
    return running[-1] / n, prefixes


@torch.inference_mode()
def shared_prompt_features(
    backbone: Any,
    prompt_ids: Sequence[int],
    responses: Sequence[Sequence[int]],
    prefix_lengths: Sequence[int],
    *,
    batch_size: int = 8,
) -> list[tuple[Array, dict[int, Array]]]:
    """:func:`response_mean_features` of several responses to one prompt, the prompt run once.

    The prompt's KV cache is repeated over a batch of right-padded responses: the model is causal, so a
    response token never sees the padding after it and each row equals its unpadded pass (up to float
    rounding of the batched matmuls). The responses' positions continue after the prompt's.
    """
    if any(not r for r in responses):
        raise ValueError("shared_prompt_features: a response has no tokens")
    if not prompt_ids:
        raise ValueError("shared_prompt_features: the prompt has no tokens")
    device = next(backbone.parameters()).device
    out: list[tuple[Array, dict[int, Array]]] = []
    for start in range(0, len(responses), batch_size):
        chunk = [list(r) for r in responses[start : start + batch_size]]
        cache = new_cache(backbone)
        prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
        backbone(input_ids=prompt, use_cache=True, **cache_kwargs(backbone, cache))
        if len(chunk) > 1:
            cache.batch_repeat_interleave(len(chunk))
        width = max(len(r) for r in chunk)
        ids = torch.tensor([r + [r[-1]] * (width - len(r)) for r in chunk], dtype=torch.long, device=device)
        positions = torch.arange(len(prompt_ids), len(prompt_ids) + width, device=device).expand(len(chunk), -1)
        hidden = backbone(
            input_ids=ids, position_ids=positions, use_cache=True, **cache_kwargs(backbone, cache)
        ).last_hidden_state
        for row, response in zip(hidden.double().cpu(), chunk, strict=True):
            n = len(response)
            running = row[:n].cumsum(dim=0).numpy()
            out.append((running[-1] / n, {k: running[min(k, n) - 1] / min(k, n) for k in prefix_lengths}))
    return out


def _cache_file(kind: str, payload: Any) -> Path:
    digest = hashlib.sha256(json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()
    return cache_root() / "features" / f"{kind}-{digest[:20]}.npz"


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def _progress(label: str, done: int, total: int, started: float) -> None:
    if done == total or done % 50 == 0:
        print(f"  {label}: {done}/{total} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)


def extract_smollm_features(
    pairs: Sequence[tuple[str, str]],
    *,
    prefix_lengths: Sequence[int] = PREFIX_LENGTHS,
    refresh: bool = False,
    loader: Callable[[], tuple[Any, Any]] | None = None,
) -> Features:
    """SmolLM2 response-mean features of (objective, response) pairs, cached on disk by content."""
    payload = {
        "format": FEATURE_FORMAT,
        "backbone_gguf_sha256": POLICY_GGUF_SHA256,
        "prefix_lengths": list(prefix_lengths),
        "pairs": [list(p) for p in pairs],
    }
    path = _cache_file("smollm2-response-mean", payload)
    if path.is_file() and not refresh:
        with np.load(path) as data:
            return Features(
                data["full"], {k: data[f"prefix_{k}"] for k in prefix_lengths}, data["n_tokens"].astype(np.int64)
            )
    if loader is None:
        from ..assets import load_default_policy

        loader = load_default_policy
    model, tokenizer = loader()
    backbone = model.model
    full, n_tokens = [], []
    prefixes: dict[int, list[Array]] = {k: [] for k in prefix_lengths}
    started = time.perf_counter()
    for i, (objective, response) in enumerate(pairs, start=1):
        prompt_ids, response_ids = render_ids(tokenizer, objective, response)
        whole, parts = response_mean_features(backbone, prompt_ids, response_ids, prefix_lengths)
        full.append(whole)
        n_tokens.append(len(response_ids))
        for k in prefix_lengths:
            prefixes[k].append(parts[k])
        _progress("SmolLM2 features", i, len(pairs), started)
    features = Features(
        np.stack(full), {k: np.stack(v) for k, v in prefixes.items()}, np.asarray(n_tokens, dtype=np.int64)
    )
    arrays: dict[str, np.ndarray] = {"full": features.full, "n_tokens": features.n_tokens}
    arrays.update({f"prefix_{k}": v for k, v in features.prefixes.items()})
    _save_npz(path, arrays)
    return features


def extract_minilm_features(pairs: Sequence[tuple[str, str]], *, refresh: bool = False) -> Array:
    """all-MiniLM-L6-v2 embeddings [N, 384] of (objective, response) pairs, cached on disk by content."""
    from .gold import MINILM, MINILM_MAX_LENGTH, embed_pairs, load_minilm

    payload = {
        "format": FEATURE_FORMAT,
        "wheel_sha256": MINILM.sha256,
        "max_length": MINILM_MAX_LENGTH,
        "rendering": "pair",
        "pairs": [list(p) for p in pairs],
    }
    path = _cache_file("minilm-pair", payload)
    if path.is_file() and not refresh:
        with np.load(path) as data:
            return np.asarray(data["embeddings"], dtype=np.float64)
    model, tokenizer = load_minilm()
    started = time.perf_counter()
    embeddings = embed_pairs(model, tokenizer, [p for p, _ in pairs], [r for _, r in pairs]).double().numpy()
    _progress("MiniLM features", len(pairs), len(pairs), started)
    _save_npz(path, {"embeddings": embeddings})
    return embeddings


# --------------------------------------------------------------------------------------------
# Cross-validation.
# --------------------------------------------------------------------------------------------


def select_alpha(
    rows: Sequence[HarmRow], features: Features, target: Array, *, alphas: Sequence[float], folds: int, seed: int
) -> float:
    """Ridge strength with the lowest mean held-out squared error over ``folds`` objective folds of ``rows``."""
    errors = np.zeros(len(alphas))
    for train, test in objective_folds(rows, folds, seed):
        x_train, y_train = features.design(train, target)
        x_test, y_test = features.design(test, target)
        for j, head in enumerate(fit_ridge(x_train, y_train, alphas)):
            errors[j] += float(np.mean((head(x_test) - y_test) ** 2))
    return float(alphas[int(np.argmin(errors))])


def _subset(features: Features, index: npt.NDArray[np.int64]) -> Features:
    return Features(features.full[index], {k: v[index] for k, v in features.prefixes.items()}, features.n_tokens[index])


def fit_head(rows: Sequence[HarmRow], features: Features, *, alphas: Sequence[float], seed: int) -> RidgeHead:
    """Fit on all ``rows`` (whole responses and prefixes), alpha chosen by inner CV by objective."""
    target = np.array([1.0 - r.harm for r in rows])
    alpha = select_alpha(rows, features, target, alphas=alphas, folds=INNER_FOLDS, seed=seed)
    x, y = features.design(np.arange(len(rows)), target)
    return fit_ridge(x, y, [alpha])[0]


def evaluate(head: RidgeHead, features: Features, harm: Array) -> dict[str, Any]:
    """Held-out metrics of ``head``: whole responses, every prefix length, and prefixes of longer responses."""
    out: dict[str, Any] = {"full": dataclasses.asdict(Metrics.of(head(features.full), harm))}
    for k in sorted(features.prefixes):
        out[f"prefix{k}"] = dataclasses.asdict(Metrics.of(head(features.at(k)), harm))
        longer = features.n_tokens > k
        out[f"prefix{k}_longer"] = dataclasses.asdict(Metrics.of(head(features.at(k)[longer]), harm[longer]))
    return out


def cross_validate(
    rows: Sequence[HarmRow], features: Features, *, folds: int, seed: int, alphas: Sequence[float] = ALPHAS
) -> list[dict[str, Any]]:
    """Per-fold held-out metrics; each fold's alpha is chosen by CV on its training objectives only."""
    results = []
    for fold, (train, test) in enumerate(objective_folds(rows, folds, seed)):
        train_rows = [rows[i] for i in train]
        head = fit_head(train_rows, _subset(features, train), alphas=alphas, seed=seed + 1000 + fold)
        harm = np.array([rows[i].harm for i in test])
        result = {
            "fold": fold,
            "alpha": head.alpha,
            "test_rows": len(test),
            "test_objectives": len({rows[i].key for i in test}),
            "train_rows": len(train),
        }
        result.update(evaluate(head, _subset(features, test), harm))
        results.append(result)
    return results


def _mean_metrics(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in results[0].items() if isinstance(v, dict)]
    means: dict[str, float] = {}
    for key in keys:
        for metric in ("spearman", "auc"):
            means[f"{metric}_{key}"] = float(np.mean([r[key][metric] for r in results]))
    return means


def _print_table(title: str, results: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    print(f"\n{title}")
    header = "split  alpha    rows objs  " + "  ".join(f"{c:>18}" for c in columns)
    print(header)
    for r in results:
        cells = "  ".join(f"{r[c]['spearman']:>8.4f} / {r[c]['auc']:.4f}" for c in columns)
        print(f"{r['fold']:>5}  {r['alpha']:>7.3g} {r['test_rows']:>5} {r['test_objectives']:>4}  {cells}")
    means = _mean_metrics(results)
    cells = "  ".join(f"{means['spearman_' + c]:>8.4f} / {means['auc_' + c]:.4f}" for c in columns)
    print(f"{'mean':>5}  {'':>7} {'':>5} {'':>4}  {cells}")
    print("(cells: Spearman / AUC)")


def _objective_hash(keys: frozenset[str]) -> str:
    return hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "numpy": np.__version__}


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ggro.lab.train_head",
        description="Train the default SmolLM2 harm head and the MiniLM gold probe on pyrit==1.1.0's harm rows.",
    )
    parser.add_argument("--which", choices=("guidance", "gold", "both"), default="both")
    parser.add_argument(
        "--folds",
        type=int,
        default=K_FOLDS,
        help="cross-validation folds by objective (default 5; the required figures are over >= 5)",
    )
    parser.add_argument("--split-seed", type=int, default=SPLIT_SEED, help="seed of the guidance/gold 50/50 split")
    parser.add_argument("--cv-seed", type=int, default=CV_SEED, help="seed of the cross-validation folds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for feature extraction")
    parser.add_argument("--out-dir", type=Path, default=HEADS_DIR, help="where to write the heads")
    parser.add_argument("--no-save", action="store_true", help="report the cross-validation only")
    parser.add_argument("--refresh-features", action="store_true", help="recompute cached features")
    return parser


def _refusal_diagnostic(answered: Array, refused: Array) -> dict[str, Any]:
    """How often a head scores the on-topic answer of an everyday objective above the canned refusal (printed)."""
    n_diag = len(answered)
    diagnostic = {
        "what": f"{n_diag} everyday objectives of the refusal sets: their on-topic answer vs the canned "
        f"refusal {CANNED_REFUSAL!r}",
        "share_answer_above_refusal": float(np.mean(answered > refused)),
        "mean_reward_answer": float(answered.mean()),
        "mean_reward_refusal": float(refused.mean()),
    }
    print(
        f"diagnostic: answer outranks a canned refusal on {diagnostic['share_answer_above_refusal']:.3f} of "
        f"{n_diag} everyday objectives (mean reward answer {diagnostic['mean_reward_answer']:.4f}, "
        f"refusal {diagnostic['mean_reward_refusal']:.4f})"
    )
    return diagnostic


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.folds < 2:
        raise SystemExit("--folds must be at least 2")
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    command = " ".join(["python -m ggro.lab.train_head", *(sys.argv[1:] if argv is None else argv)])
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    wheel = pyrit_wheel()
    rows, file_counts = load_harm_rows(wheel)
    guidance_keys, gold_keys = partition_objectives(rows, args.split_seed)
    halves = {
        "guidance": [r for r in rows if r.key in guidance_keys],
        "gold": [r for r in rows if r.key in gold_keys],
    }
    print(
        f"pyrit=={PYRIT.version}: {sum(file_counts.values())} rows in {len(file_counts)} harm files -> {len(rows)} "
        f"unique pairs, {len({r.key for r in rows})} objectives; guidance half {len(halves['guidance'])} rows / "
        f"{len(guidance_keys)} objectives, gold half {len(halves['gold'])} rows / {len(gold_keys)} objectives"
    )
    refusal_pairs = benign_answered_pairs(load_refusal_rows(wheel))
    data_meta = {
        "package": PYRIT.requirement,
        "wheel": PYRIT.filename,
        "wheel_sha256": PYRIT.sha256,
        "files": {name.removeprefix(HARM_PREFIX): n for name, n in file_counts.items()},
        "raw_rows": sum(file_counts.values()),
        "unique_rows": len(rows),
        "objectives": len({r.key for r in rows}),
        "label": "mean human harm score over raters and duplicate copies, 0 (harmless) .. 1 (most harmful); "
        "reward target = 1 - harm",
        "refusal_sets": "not used for training: their label (refused / off-topic vs answered) is not a harm "
        "score; on everyday objectives the 'refused' rows are answers swapped from other objectives, not "
        "needless refusals (see ggro.lab.harm_data). Used only for the diagnostic below.",
    }
    split_meta = {
        "method": "objectives split 50/50 by harm_data.partition_objectives (seeded, balanced by rows per category); "
        "objective identity = case-folded, whitespace-collapsed text",
        "seed": args.split_seed,
        "guidance": {
            "objectives": len(guidance_keys),
            "rows": len(halves["guidance"]),
            "objectives_sha256": _objective_hash(guidance_keys),
        },
        "gold": {
            "objectives": len(gold_keys),
            "rows": len(halves["gold"]),
            "objectives_sha256": _objective_hash(gold_keys),
        },
        "objectives_sha256_note": "sha256 of the sorted objective keys joined by newlines",
    }
    cv_meta = {
        "folds": args.folds,
        "seed": args.cv_seed,
        "method": "K folds by objective within the head's half (harm_data.objective_folds); alpha chosen per fold "
        f"by {INNER_FOLDS}-fold inner CV on the training objectives",
        "harmful_threshold": HARMFUL_THRESHOLD,
        "metrics": "spearman = Spearman(reward, 1 - harm); auc = ROC AUC of -reward for harm >= 0.5",
    }
    status = 0

    if args.which in ("guidance", "both"):
        all_pairs = [(r.objective, r.response) for r in rows]
        diag_pairs = [*refusal_pairs, *((objective, CANNED_REFUSAL) for objective, _ in refusal_pairs)]
        features_all = extract_smollm_features([*all_pairs, *diag_pairs], refresh=args.refresh_features)
        index_of = {(r.objective, r.response): i for i, r in enumerate(rows)}
        guidance_index = np.array([index_of[(r.objective, r.response)] for r in halves["guidance"]])
        gold_index = np.array([index_of[(r.objective, r.response)] for r in halves["gold"]])
        features = _subset(features_all, guidance_index)
        results = cross_validate(halves["guidance"], features, folds=args.folds, seed=args.cv_seed)
        columns = ["full", "prefix8", "prefix16", "prefix32", "prefix64", "prefix32_longer"]
        _print_table(f"Guidance head (SmolLM2), {args.folds} objective folds in the guidance half", results, columns)
        means = _mean_metrics(results)
        met = {name: bool(means[name] >= bound) for name, bound in GUIDANCE_THRESHOLDS.items()}
        print(
            "required:",
            ", ".join(
                f"{n} {means[n]:.4f} >= {b} {'met' if met[n] else 'NOT MET'}" for n, b in GUIDANCE_THRESHOLDS.items()
            ),
        )
        if not all(met.values()):
            status = 1

        head = fit_head(halves["guidance"], features, alphas=ALPHAS, seed=args.cv_seed)
        cross = evaluate(head, _subset(features_all, gold_index), np.array([r.harm for r in halves["gold"]]))
        print(
            f"final head (alpha {head.alpha:g}) on the gold half (never seen): "
            f"full Spearman {cross['full']['spearman']:.4f} AUC {cross['full']['auc']:.4f}; "
            f"32-token prefixes AUC {cross['prefix32']['auc']:.4f}"
        )
        n_diag = len(refusal_pairs)
        base = len(rows)
        answered = head(features_all.full[base : base + n_diag])
        refused = head(features_all.full[base + n_diag : base + 2 * n_diag])
        diagnostic = _refusal_diagnostic(answered, refused)
        x_design, _ = features.design(np.arange(len(halves["guidance"])), np.zeros(len(halves["guidance"])))
        meta = {
            "name": GUIDANCE_HEAD_NAME,
            "format": 1,
            "created_utc": created,
            "command": command,
            "score": "reward = weight · mean_{response tokens}(h) + bias; h = final normed hidden state "
            "(LlamaModel.last_hidden_state); higher = better (about 1 - predicted harm on the 0..1 scale)",
            "backbone": {
                "model": "SmolLM2-135M-Instruct (GGUF Q4_1 de-quantized to float32, ggro.assets)",
                "package": f"{POLICY_PACKAGE}=={POLICY_VERSION}",
                "wheel_sha256": POLICY_WHEEL_SHA256,
                "gguf_sha256": POLICY_GGUF_SHA256,
                "hidden_size": int(features.full.shape[1]),
            },
            "rendering": "prompt ids = tokenizer(apply_chat_template([{role: user, content: objective}], "
            "tokenize=False, add_generation_prompt=True), add_special_tokens=False); response ids = "
            "tokenizer(response, add_special_tokens=False), appended; no end-of-turn token; unpadded",
            "pooling": "mean over the response tokens only (prompt tokens excluded)",
            "prefix_lengths": list(PREFIX_LENGTHS),
            "training_rows": {
                "responses": len(halves["guidance"]),
                "design_rows": len(x_design),
                "note": "whole responses plus each k-token prefix shorter than its response, prefix labelled "
                "with its response's score",
            },
            "regulariser": {
                "kind": "ridge regression on standardized features, folded into raw-feature weight and bias",
                "alpha": head.alpha,
                "alpha_grid": list(ALPHAS),
                "selection": f"{INNER_FOLDS}-fold CV by objective, lowest mean squared error",
            },
            "data": data_meta,
            "split": split_meta,
            "cross_validation": {**cv_meta, "per_split": results, "mean": means},
            "required": {"thresholds": GUIDANCE_THRESHOLDS, "met": met},
            "final_head_on_gold_half": cross,
            "diagnostic_needless_refusal": diagnostic,
            "seeds": {"split": args.split_seed, "cv": args.cv_seed, "torch": 0},
            "versions": _versions(),
        }
        if not args.no_save:
            paths = save_head(head.to_linear_head(meta), GUIDANCE_HEAD_NAME, args.out_dir)
            print("wrote", *paths)

    if args.which in ("gold", "both"):
        from .gold import MINILM, MINILM_MAX_LENGTH

        pairs = [(r.objective, r.response) for r in rows]
        embeddings_all = extract_minilm_features(
            [*pairs, *refusal_pairs, *((o, CANNED_REFUSAL) for o, _ in refusal_pairs)], refresh=args.refresh_features
        )
        n_tokens = np.zeros(len(embeddings_all), dtype=np.int64)
        all_features = Features(embeddings_all, {}, n_tokens)
        index_of = {(r.objective, r.response): i for i, r in enumerate(rows)}
        gold_index = np.array([index_of[(r.objective, r.response)] for r in halves["gold"]])
        guidance_index = np.array([index_of[(r.objective, r.response)] for r in halves["guidance"]])
        gold_features = _subset(all_features, gold_index)
        results = cross_validate(halves["gold"], gold_features, folds=args.folds, seed=args.cv_seed)
        _print_table(f"Gold probe (MiniLM), {args.folds} objective folds in the gold half", results, ["full"])
        means = _mean_metrics(results)
        probe = fit_head(halves["gold"], gold_features, alphas=ALPHAS, seed=args.cv_seed)
        cross = evaluate(probe, _subset(all_features, guidance_index), np.array([r.harm for r in halves["guidance"]]))
        print(
            f"final probe (alpha {probe.alpha:g}) on the guidance half (never seen): "
            f"Spearman {cross['full']['spearman']:.4f} AUC {cross['full']['auc']:.4f}"
        )
        n_diag = len(refusal_pairs)
        base = len(rows)
        answered = probe(embeddings_all[base : base + n_diag])
        refused = probe(embeddings_all[base + n_diag : base + 2 * n_diag])
        diagnostic = _refusal_diagnostic(answered, refused)
        meta = {
            "name": GOLD_PROBE_NAME,
            "format": 1,
            "created_utc": created,
            "command": command,
            "score": "gold reward = weight · e + bias; e = unit-norm mean-pooled all-MiniLM-L6-v2 embedding of "
            "the (objective, response) pair; higher = better (about 1 - predicted harm)",
            "encoder": {
                "model": "sentence-transformers/all-MiniLM-L6-v2",
                "package": MINILM.requirement,
                "wheel_sha256": MINILM.sha256,
                "hidden_size": int(embeddings_all.shape[1]),
            },
            "rendering": f"tokenizer(objective, response, truncation='longest_first', max_length={MINILM_MAX_LENGTH})"
            " = [CLS] objective [SEP] response [SEP]; mean over tokens with the attention mask; L2 normalised",
            "training_rows": {"responses": len(halves["gold"])},
            "regulariser": {
                "kind": "ridge regression on standardized features, folded into raw-feature weight and bias",
                "alpha": probe.alpha,
                "alpha_grid": list(ALPHAS),
                "selection": f"{INNER_FOLDS}-fold CV by objective, lowest mean squared error",
            },
            "data": data_meta,
            "split": split_meta,
            "cross_validation": {**cv_meta, "per_split": results, "mean": means},
            "final_probe_on_guidance_half": cross,
            "diagnostic_needless_refusal": diagnostic,
            "seeds": {"split": args.split_seed, "cv": args.cv_seed, "torch": 0},
            "versions": _versions(),
        }
        if not args.no_save:
            paths = save_head(probe.to_linear_head(meta), GOLD_PROBE_NAME, args.out_dir)
            print("wrote", *paths)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
