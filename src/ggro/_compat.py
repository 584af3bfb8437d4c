"""Small shims over transformers releases (4.56+ and 5.x), public APIs only."""

from __future__ import annotations

import copy as copy_module
import inspect
from functools import lru_cache
from typing import Any

import torch
from transformers import DynamicCache


@lru_cache(maxsize=64)
def _cache_kwarg_for(forward: Any) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: torch.nn.Module, cache: DynamicCache | None) -> dict[str, Any]:
    """The keyword that passes a KV cache to ``model.forward`` (renamed ``cache`` in transformers 5.x)."""
    return {_cache_kwarg_for(type(model).forward): cache}


@lru_cache(maxsize=64)
def _takes_cache_position(forward: Any) -> bool:
    return "cache_position" in inspect.signature(forward).parameters


def cache_position_kwargs(model: torch.nn.Module, start: int, width: int, device: torch.device) -> dict[str, Any]:
    """Older releases take slot indices as ``cache_position``; 5.x derives them from the cache."""
    if _takes_cache_position(type(model).forward):
        return {"cache_position": torch.arange(start, start + width, device=device)}
    return {}


def output_cache(output: Any) -> DynamicCache | None:
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    return cache


def new_cache(model: Any) -> DynamicCache:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


def gather_cache_slots(cache: DynamicCache, index: torch.Tensor) -> None:
    """Keep, per batch row, the KV slots in ``index`` [batch, new_len] (in place, all layers)."""
    for layer in list[Any](cache.layers):
        keys, values = layer.keys, layer.values
        if keys is None or values is None or keys.numel() == 0:
            continue
        idx = index.to(keys.device)[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
        layer.keys = keys.gather(2, idx)
        layer.values = values.gather(2, idx)


def repeated_cache(cache: DynamicCache, times: int) -> DynamicCache:
    """A copy of a batch-1 cache repeated ``times`` along the batch (the original is left as it is)."""
    copy = copy_module.deepcopy(cache)
    copy.batch_repeat_interleave(times)
    return copy


def crop_to(cache: DynamicCache, length: int) -> None:
    """Keep the first ``length`` slots (a negative count to remove works across 4.x and 5.x)."""
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


def crop_detached(cache: DynamicCache, length: int) -> None:
    """Crop to ``length`` slots and cut the kept KV out of any autograd graph (a scoring pass with
    gradients appended to the cache; the prefix it keeps must not hold on to that graph)."""
    crop_to(cache, length)
    for layer in list[Any](cache.layers):
        if layer.keys is not None and layer.keys.requires_grad:
            layer.keys = layer.keys.detach()
            layer.values = layer.values.detach()


def append_cache_rows(cache: DynamicCache, rows: torch.Tensor) -> None:
    """Append copies of the batch rows ``rows`` (indices) at the end of the batch (in place, all layers)."""
    for layer in list[Any](cache.layers):
        keys, values = layer.keys, layer.values
        if keys is None or values is None or keys.numel() == 0:
            continue
        index = rows.to(keys.device)
        layer.keys = torch.cat([keys, keys[index]])
        layer.values = torch.cat([values, values[index]])


def copy_cache_row(cache: DynamicCache, target: int, source: int) -> None:
    """Overwrite batch row ``target`` with row ``source`` (in place, all layers)."""
    for layer in list[Any](cache.layers):
        keys, values = layer.keys, layer.values
        if keys is None or values is None or keys.numel() == 0:
            continue
        keys[target].copy_(keys[source])
        values[target].copy_(values[source])


def cache_rows(model: Any, cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding copies of the batch rows ``rows`` (indices) of a non-empty ``cache``, every layer."""
    sub = new_cache(model)
    for index, layer in enumerate(list[Any](cache.layers)):
        picked = rows.to(layer.keys.device)
        sub.update(layer.keys.index_select(0, picked), layer.values.index_select(0, picked), index)
    return sub


def cache_slots(model: Any, cache: DynamicCache, rows: torch.Tensor, index: torch.Tensor) -> DynamicCache:
    """A new cache whose batch row ``j`` holds the slots ``index[j]`` of the batch row ``rows[j]`` of a
    non-empty ``cache``, every layer (``index``: [len(rows), slots])."""
    sub = new_cache(model)
    for number, layer in enumerate(list[Any](cache.layers)):
        keys, values = layer.keys, layer.values
        picked = rows.to(keys.device)
        idx = index.to(keys.device)[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
        sub.update(keys.index_select(0, picked).gather(2, idx), values.index_select(0, picked).gather(2, idx), number)
    return sub


def merge_cache_rows(cache: DynamicCache, sub: DynamicCache, rows: torch.Tensor, width: int) -> None:
    """Grow every row of ``cache`` by ``width`` slots: for the batch rows ``rows``, the last ``width`` slots of
    ``sub`` (a pass over those rows only, from :func:`cache_rows`); zeros elsewhere (in place, all layers)."""
    for layer, fed in zip(list[Any](cache.layers), list[Any](sub.layers), strict=True):
        for name in ("keys", "values"):
            full, new = getattr(layer, name), getattr(fed, name)[:, :, -width:]
            grown = full.new_zeros(full.shape[0], full.shape[1], full.shape[2] + width, full.shape[3])
            grown[:, :, : full.shape[2]] = full
            grown[rows.to(full.device), :, full.shape[2] :] = new
            setattr(layer, name, grown)


def _attention_implementation(model: Any) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def takes_4d_mask(model: Any) -> bool:
    """Whether ``model``'s attention takes a prepared 4-D mask (SDPA and eager do; flash attention does not)."""
    return _attention_implementation(model) in ("sdpa", "eager")


def attention_mask_4d(model: Any, allowed: torch.Tensor) -> torch.Tensor:
    """A prepared [batch, 1, query, key] mask for ``model`` from a bool one (True: may attend), as transformers
    builds its own: bool for SDPA, additive float (0 or the dtype's minimum) for eager attention. Other kernels
    (flash attention) take no 4-D mask: refused with the setting to change."""
    implementation = _attention_implementation(model)
    if implementation == "sdpa":
        return allowed
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    raise ValueError(
        f"attn_implementation {implementation!r}: decoding a fork's rows together needs a 4-D attention mask; "
        "load the policy with attn_implementation='sdpa' or 'eager', or use refinement='sequential'"
    )
