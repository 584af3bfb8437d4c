"""The framework-wrapper kit: what the LangChain and LlamaIndex packages (and any other wrapper) share.

Weights are loaded once per process and shared by every wrapper instance naming the same models
(:func:`shared_decoder`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from .decoder import GGRODecoder

__all__ = ["shared_decoder"]


_SHARED_DECODERS: dict[tuple[str | None, str | None, str, str], GGRODecoder] = {}
_SHARED_LOCK = threading.Lock()


def shared_decoder(
    policy: str | Path | None = None,
    reward: str | Path | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device = "cpu",
) -> GGRODecoder:
    """The process-wide decoder for (policy, reward, dtype, device): loaded on first use, then reused.

    Framework wrappers are constructed often (one per chain, per test, per request handler); they call this
    when they first generate, so weights load once per process, never per construction or per call.
    """
    torch_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype: expected a torch dtype name such as 'float32' or 'bfloat16', got {dtype!r}")
    key = (
        None if policy is None else str(policy),
        None if reward is None else str(reward),
        str(torch_dtype),
        str(torch.device(device)),
    )
    with _SHARED_LOCK:  # held while loading, so concurrent first calls load once
        decoder = _SHARED_DECODERS.get(key)
        if decoder is None:
            decoder = GGRODecoder.from_pretrained(key[0], key[1], dtype=torch_dtype, device=device)
            _SHARED_DECODERS[key] = decoder
    return decoder
