"""Trained linear heads shipped with ggro, and their loader.

Each head is ``<name>.safetensors`` (``weight`` float32 [hidden], ``bias`` float32 [1]) next to
``<name>.json`` (provenance: data, features, regulariser, held-out metrics, the command that retrains it).
A head scores a pooled feature vector ``h`` as ``weight · h + bias``; higher is better.

* ``smollm2_harm_head``: the default guidance reward head, applied to the mean over the response tokens
  of SmolLM2-135M-Instruct's final (normed) hidden state. Trained by :mod:`ggro.lab.train_head`.
* ``qwen05_harm_head`` and ``qwen05_help_head``: the two terms of the ``qwen-guidance`` reward, applied to the
  mean over the first 48 response tokens of Qwen2.5-Coder-0.5B-Instruct's final (normed) hidden state: a harm
  head (about 1 - predicted harm) and a pairwise helpfulness head (on-topic answer over a needless refusal,
  refusal over compliance). Trained by :mod:`ggro.lab.train_guidance`.
* ``minilm_gold_probe``: the gold judge's probe on all-MiniLM-L6-v2 sentence embeddings
  (see :mod:`ggro.lab.gold`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = [
    "GOLD_PROBE_NAME",
    "GUIDANCE_HEAD_NAME",
    "HEADS_DIR",
    "QWEN_HARM_HEAD_NAME",
    "QWEN_HELP_HEAD_NAME",
    "LinearHead",
    "head_paths",
    "load_head",
    "save_head",
]

HEADS_DIR = Path(__file__).resolve().parent
GUIDANCE_HEAD_NAME = "smollm2_harm_head"
GOLD_PROBE_NAME = "minilm_gold_probe"
QWEN_HARM_HEAD_NAME = "qwen05_harm_head"
QWEN_HELP_HEAD_NAME = "qwen05_help_head"


@dataclasses.dataclass(frozen=True)
class LinearHead:
    """``score(h) = weight · h + bias`` on a pooled feature ``h``; higher = better."""

    weight: torch.Tensor
    """float32 [hidden]"""
    bias: torch.Tensor
    """float32 [1]"""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.weight.ndim != 1 or self.bias.shape != (1,):
            raise ValueError(
                f"linear head: weight must be [hidden] and bias [1], got {tuple(self.weight.shape)} and "
                f"{tuple(self.bias.shape)}"
            )
        if not (torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all()):
            raise ValueError("linear head: weight or bias holds non-finite values")

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of ``features`` [..., hidden] -> [...] (differentiable, in the features' dtype)."""
        if features.shape[-1] != self.hidden_size:
            raise ValueError(f"linear head expects features of size {self.hidden_size}, got {features.shape[-1]}")
        weight = self.weight.to(device=features.device, dtype=features.dtype)
        bias = self.bias.to(device=features.device, dtype=features.dtype)
        return features @ weight + bias[0]


def head_paths(name: str, directory: Path | None = None) -> tuple[Path, Path]:
    """(safetensors path, json path) of head ``name``."""
    base = directory if directory is not None else HEADS_DIR
    return base / f"{name}.safetensors", base / f"{name}.json"


def load_head(name: str, directory: Path | None = None) -> LinearHead:
    """Load head ``name`` (e.g. ``"smollm2_harm_head"``) and its provenance from ``directory`` (default: shipped)."""
    tensors_path, meta_path = head_paths(name, directory)
    if not tensors_path.is_file():
        raise FileNotFoundError(
            f"linear head {name!r} not found at {tensors_path}; retrain it with `python -m ggro.lab.train_head`"
        )
    tensors = load_file(str(tensors_path))
    missing = {"weight", "bias"} - set(tensors)
    if missing:
        raise ValueError(f"{tensors_path} lacks tensor(s) {sorted(missing)}")
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return LinearHead(tensors["weight"].float(), tensors["bias"].float(), meta)


def save_head(head: LinearHead, name: str, directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``head`` as ``<name>.safetensors`` + ``<name>.json``; return both paths."""
    tensors_path, meta_path = head_paths(name, directory)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"weight": head.weight.detach().float().contiguous(), "bias": head.bias.detach().float().contiguous()},
        str(tensors_path),
        metadata={"format": "ggro-linear-head-1", "name": name},
    )
    tensors_path.chmod(0o644)  # safetensors writes owner-only files; the heads ship in the package
    meta_path.write_text(json.dumps(head.meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return tensors_path, meta_path
