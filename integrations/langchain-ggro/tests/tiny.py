"""Tiny random models saved once per test session, for the paths that load by id or path."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from ggro.testing import save_tiny_models

# 3 candidates per segment keep the suites fast and still exercise nudging. The token budget is left to each
# test: LangChain's standard tests pass `max_tokens` themselves.
TINY_OPTIONS = {"refinement_steps": 3}


@functools.cache
def tiny_model_dirs() -> tuple[str, str]:
    """(policy directory, reward directory) of the tiny models, saved with `save_pretrained`."""
    root = Path(tempfile.mkdtemp(prefix="langchain-ggro-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    policy, reward = save_tiny_models(root)
    return str(policy), str(reward)


def tiny_params() -> dict[str, object]:
    policy, reward = tiny_model_dirs()
    return {"model": policy, "reward_model": reward, **TINY_OPTIONS}
