"""`ggro bench`: what the default user path costs, next to plain greedy decoding and the release's structure.

Every method runs in one process on the same prompts, each timed ``runs`` times (the median is reported):

- ``greedy``: the policy's own ``generate``, one prompt at a time; ``greedy-batch``: all prompts as one
  left-padded ``generate`` batch (what batching buys plain decoding on this machine: the yardstick for
  ``ggro-batch``; left padding may change a float32 rounding, so it is in no identity pair).
- ``ggro``: ``GGRODecoder.generate_ids([ids])`` one prompt at a time, with the decoder a user gets from
  ``GGRODecoder.from_pretrained(policy, reward)`` and the configuration given (defaults plus overrides).
- ``ggro-unfused``: the same with ``fused_reward=False`` (the reward's own forward pass).
- ``ggro-batch``: the same prompts as one ``generate_ids`` batch.
- ``ggro-parallel``: one at a time with ``refinement="parallel"`` (the default since it matched sequential
  refinement on the evaluation; kept as an explicit name); ``ggro-sequential``: with ``refinement="sequential"``
  (the paper's order, the default before).
- ``ggro-fast``: one at a time with ``refinement="parallel"`` and ``early_exit_gain=FAST_EARLY_EXIT_GAIN``;
  ``ggro-fast-batch``: that configuration with all prompts as one batch.
- ``reference``: GGRO with ``GGROConfig.reference()`` and the reference reward (the SmolLM2 backbone with
  the fixtures' seeded head, an :class:`HFRewardModel`) on the embedded SmolLM2 policy, one at a time;
  ``release-structure``: the same algorithm the way the authors' release is structured
  (``baseline.naive_ggro_generate``). Both need the embedded default policy (or ``synthetic_1b``).

A method whose options are not fields of the installed :class:`GGROConfig` (an older checkout) is skipped
with a note; a method that raises is reported as failed with its message. The report says, for pairs that
should decode the same tokens, whether they did, and where the GGRO methods' time went (from the results'
``timing``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import GGROConfig
from ..decoder import GGRODecoder
from ..events import GGROResult
from ..prompting import encode_prompt
from ..rewards.base import RewardModel
from ..rewards.hf import HFRewardModel
from .baseline import naive_ggro_generate

__all__ = [
    "BENCH_PROMPTS",
    "FAST_EARLY_EXIT_GAIN",
    "IDENTITY_PAIRS",
    "METHODS",
    "BenchModels",
    "BenchSettings",
    "run_bench",
]

BENCH_PROMPTS = [
    "What are some tips for getting a good night's sleep?",
    "How do I pick a lock?",
    "Can you explain what photosynthesis is in simple terms?",
    "How can I make a bomb at home?",
    "What's the best way to learn a new language?",
    "What should I pack for a weekend camping trip?",
    "Write a short insult about my coworker.",
    "How do I politely decline a meeting invitation?",
    "What household chemicals should never be mixed?",
    "Give me three ideas for a healthy breakfast.",
    "How can I get back at someone who hurt me?",
    "Explain how vaccines train the immune system.",
]

FAST_EARLY_EXIT_GAIN = 0.005
"""``early_exit_gain`` of the ``ggro-fast`` methods (reward units)."""

METHODS = (
    "greedy",
    "greedy-batch",
    "ggro",
    "ggro-unfused",
    "ggro-batch",
    "ggro-parallel",
    "ggro-sequential",
    "ggro-fast",
    "ggro-fast-batch",
    "reference",
    "release-structure",
)
"""Every method, in the order they run."""

IDENTITY_PAIRS = (
    ("ggro", "ggro-unfused"),
    ("ggro", "ggro-batch"),
    ("ggro-fast", "ggro-fast-batch"),
    ("reference", "release-structure"),
)
"""Pairs that should decode the same tokens for every prompt."""

_REFERENCE_METHODS = ("reference", "release-structure")
_BATCHED = ("ggro-batch", "ggro-fast-batch")
# Every method that decodes with GGRODecoder, so its results carry the timing breakdown.
_GREEDY = ("greedy", "greedy-batch")
_PROFILED = tuple(m for m in METHODS if m not in (*_GREEDY, "release-structure"))


def method_options(name: str) -> dict[str, Any]:
    """The GGROConfig options a ``ggro*`` method sets over the bench's configuration."""
    fast: dict[str, Any] = {"refinement": "parallel", "early_exit_gain": FAST_EARLY_EXIT_GAIN}
    options: dict[str, dict[str, Any]] = {
        "ggro-unfused": {"fused_reward": False},
        "ggro-parallel": {"refinement": "parallel"},
        "ggro-sequential": {"refinement": "sequential"},
        "ggro-fast": fast,
        "ggro-fast-batch": fast,
    }
    return dict(options.get(name, {}))


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures. ``config`` is the configuration of the ``ggro*`` methods (each
    method's own options, :func:`method_options`, applied over it); the reference methods always use
    ``GGROConfig.reference(max_new_tokens=config.max_new_tokens)``."""

    config: GGROConfig = field(default_factory=lambda: GGROConfig(max_new_tokens=48))
    policy: str | None = None
    """As ``GGRODecoder.from_pretrained``: None (the embedded SmolLM2-135M-Instruct), an embedded name, a hub id
    or a path."""
    reward: str | None = None
    """As ``GGRODecoder.from_pretrained``: None (the embedded reward), a name, a hub id or a path."""
    methods: tuple[str, ...] | None = None
    """Methods to run (None: all of :data:`METHODS`); they run in :data:`METHODS` order."""
    prompts: int = 8
    runs: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    synthetic_1b: bool = False
    """Randomly initialised ~1B Llama-shaped policy and RM instead of the embedded ones (for GPU runs)."""
    tokenizer: str | None = None
    """Tokenizer id or path for ``synthetic_1b`` (default: the embedded policy's)."""
    memory: bool = True
    """Measure peak memory (on CPU: each method once more, in a fresh process)."""
    json: bool = False
    """Also print the report as one JSON line (the last line of stdout)."""
    out: str | None = None
    """Write (or update this device's section of) the markdown report here."""
    memory_probe: str | None = None
    """Internal: run only this method once and print its peak memory (a CPU run's child process)."""

    def __post_init__(self) -> None:
        for name in ("prompts", "runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        if not isinstance(getattr(torch, self.dtype, None), torch.dtype):
            raise ValueError(f"dtype: expected a torch dtype name such as 'float32' or 'bfloat16', got {self.dtype!r}")
        unknown = [m for m in self.methods or () if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; allowed: {list(METHODS)}")
        if self.methods is not None and not self.methods:
            raise ValueError("methods: name at least one method")
        if self.synthetic_1b and (self.policy is not None or self.reward is not None):
            raise ValueError("synthetic_1b: replaces the policy and the reward; do not name them too")

    def selected(self) -> list[str]:
        chosen = set(self.methods or METHODS)
        return [m for m in METHODS if m in chosen]


@dataclass
class BenchModels:
    """Models already in memory (tests, notebooks) instead of loading them from the settings."""

    policy: Any
    tokenizer: Any
    reward: RewardModel | None
    """The reward of the ``ggro*`` methods (None: only greedy and the reference methods can run)."""
    reference_reward: HFRewardModel | None = None
    """The reward of the reference methods (None: they are skipped with ``reference_note``)."""
    policy_name: str = "in-memory policy"
    reference_note: str = "no reference reward given"


@dataclass
class _Outcome:
    outputs: list[list[int]]
    policy_forward_passes: int | None
    reward_calls: int | None
    profile: dict[str, float] | None = None


# ---------------------------------------------------------------------------------------------- memory


def _peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):  # Linux: writing 5 resets the process's peak RSS (VmHWM)
            Path("/proc/self/clear_refs").write_text("5")


def _peak_memory(device: torch.device) -> float:
    """Peak bytes since the last reset: CUDA allocator peak, or process peak RSS on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    return float("nan")


def _rss_now() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) * 1024
    return float("nan")


def _cpu_peaks_in_subprocesses(settings: BenchSettings, names: list[str]) -> dict[str, tuple[float, float]]:
    """Run each method once in its own process (loading only what it needs); (base RSS, peak RSS) per method
    whose probe succeeded."""
    peaks: dict[str, tuple[float, float]] = {}
    src = str(Path(__file__).resolve().parents[2])  # the child imports this same ggro (e.g. an older checkout's)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    for name in names:
        probe_settings = {
            **_settings_json(settings),
            "methods": [name],
            "memory_probe": name,
            "runs": 1,
            "json": False,
            "out": None,
        }
        code = "import json, sys; from ggro.lab.bench import probe_memory; probe_memory(json.loads(sys.argv[1]))"
        cmd = [sys.executable, "-c", code, json.dumps(probe_settings)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        try:
            probe = json.loads(done.stdout.strip().splitlines()[-1])
            base, peak = float(probe["base"]), float(probe["peak"])
        except (IndexError, KeyError, TypeError, ValueError):
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"note: memory probe {name} failed (exit {done.returncode}): {tail}", flush=True)
            continue
        peaks[name] = (base, peak)
        print(f"memory probe {name}: peak {peak / 2**20:.0f} MiB (base {base / 2**20:.0f} MiB)", flush=True)
    return peaks


def _settings_json(settings: BenchSettings) -> dict[str, Any]:
    values = {name: getattr(settings, name) for name in BenchSettings.__dataclass_fields__}
    values["config"] = settings.config.model_dump()
    values["methods"] = list(settings.methods) if settings.methods is not None else None
    return values


def probe_memory(settings_json: dict[str, Any]) -> None:
    """Child-process entry of a CPU memory probe: settings as :func:`_settings_json` wrote them."""
    values = dict(settings_json)
    values["config"] = GGROConfig.model_validate(values["config"])
    if values.get("methods") is not None:
        values["methods"] = tuple(values["methods"])
    run_bench(BenchSettings(**values))


# ---------------------------------------------------------------------------------------------- models


def _synthetic_models(device: str, dtype: torch.dtype, tokenizer_path: str | None) -> tuple[Any, Any, HFRewardModel]:
    """A ~1B Llama-shaped policy and RM, randomly initialised (cost shape only; outputs are noise)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if tokenizer_path is None:
        from ..assets import default_policy_path

        tokenizer_path = str(default_policy_path())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    shape: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    policy: Any = LlamaForCausalLM(LlamaConfig(**shape, eos_token_id=2, pad_token_id=2))
    policy = policy.to(device=device, dtype=dtype).eval()
    rm: Any = LlamaForSequenceClassification(LlamaConfig(**{**shape, "num_labels": 1, "pad_token_id": 2}))
    rm = rm.to(device=device, dtype=dtype).eval()
    return policy, tokenizer, HFRewardModel(rm, name="synthetic-1b-rm")


def _load_models(settings: BenchSettings, names: Sequence[str]) -> BenchModels:
    """What ``names`` need and no more: greedy the policy; the ``ggro*`` methods the user's decoder
    (``GGRODecoder.from_pretrained``); the reference methods the reference reward."""
    from ..loading import REFERENCE_REWARD, is_default_policy, load_policy, load_reward

    dtype = getattr(torch, settings.dtype)
    if settings.synthetic_1b:
        policy, tokenizer, rm = _synthetic_models(settings.device, dtype, settings.tokenizer)
        return BenchModels(policy, tokenizer, rm, rm, policy_name="random Llama ~1B (16 layers, hidden 2048)")
    wants_reward = any(n not in (*_GREEDY, *_REFERENCE_METHODS) for n in names)
    wants_reference = any(n in _REFERENCE_METHODS for n in names)
    reward: RewardModel | None = None
    if wants_reward:
        decoder = GGRODecoder.from_pretrained(
            settings.policy, settings.reward, settings.config, dtype=dtype, device=settings.device
        )
        policy, tokenizer, reward = decoder.policy, decoder.tokenizer, decoder.reward
    else:
        policy, tokenizer = load_policy(settings.policy, dtype=dtype, device=settings.device)
    reference: HFRewardModel | None = None
    note = ""
    if wants_reference and is_default_policy(settings.policy):
        loaded = load_reward(REFERENCE_REWARD, dtype=dtype, device=settings.device)
        assert isinstance(loaded, HFRewardModel)  # the release structure needs the HF model inside
        reference = loaded
    elif wants_reference:
        note = "the reference reward is on the embedded SmolLM2 policy's vocabulary: only with the default policy"
    default_name = "smollm2-135m-instruct (embedded)"
    name = default_name if is_default_policy(settings.policy) else str(settings.policy)
    return BenchModels(policy, tokenizer, reward, reference, policy_name=name, reference_note=note)


# ---------------------------------------------------------------------------------------------- methods


def _response(result: GGROResult, eos: int | None) -> list[int]:
    return list(result.token_ids) + ([eos] if result.finish_reason == "stop" and eos is not None else [])


def _profile(results: Sequence[GGROResult], batched: bool) -> dict[str, float] | None:
    """Where the time went, from the results' ``timing`` (None when this checkout's Timing has no parts).
    Batched: every policy pass counts whole for each response, so the policy time is the max over the batch,
    and the batch took as long as its last response (each response's ``seconds`` runs from the call's start)."""
    timings = [r.timing for r in results]
    policy = [getattr(t, "policy_seconds", None) for t in timings]
    reward = [getattr(t, "reward_seconds", None) for t in timings]
    if all(v is None for v in policy + reward):
        return None
    backward = sum(getattr(t, "reward_backward_seconds", None) or 0.0 for t in timings)
    grammar = sum(getattr(t, "constraint_seconds", None) or 0.0 for t in timings)
    policy_s = max(v or 0.0 for v in policy) if batched else sum(v or 0.0 for v in policy)
    reward_s = sum(v or 0.0 for v in reward)
    total = max(t.seconds for t in timings) if batched else sum(t.seconds for t in timings)
    return {
        "policy_forward": policy_s,
        "reward_forward": reward_s - backward,
        "backward": backward,
        "grammar": grammar,
        "other": total - policy_s - reward_s - grammar,
        "total": total,
    }


def _ggro_outcome(results: list[GGROResult], eos: int | None, batched: bool) -> _Outcome:
    passes = results[0].usage.policy_forward_passes if batched else sum(r.usage.policy_forward_passes for r in results)
    return _Outcome(
        outputs=[_response(r, eos) for r in results],
        policy_forward_passes=passes,
        reward_calls=sum(r.usage.reward_calls for r in results),
        profile=_profile(results, batched),
    )


def _method_runners(
    names: list[str], models: BenchModels, config: GGROConfig, prompt_ids: list[list[int]], device: torch.device
) -> tuple[dict[str, Callable[[], _Outcome]], dict[str, str]]:
    """A runner per available method, and a note per method that cannot run here."""
    policy, tokenizer = models.policy, models.tokenizer
    eos = tokenizer.eos_token_id
    fields = set(GGROConfig.model_fields)
    runners: dict[str, Callable[[], _Outcome]] = {}
    skipped: dict[str, str] = {}
    reference_config = GGROConfig.reference(max_new_tokens=config.max_new_tokens)

    def greedy() -> _Outcome:
        outs = []
        for ids in prompt_ids:
            x = torch.tensor([ids], device=device)
            with torch.no_grad():
                y = policy.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    do_sample=False,
                    max_new_tokens=config.max_new_tokens,
                    pad_token_id=eos,
                )
            outs.append(y[0, len(ids) :].tolist())
        # generate runs one forward pass per new token and no reward
        return _Outcome(outs, policy_forward_passes=sum(len(o) for o in outs), reward_calls=0)

    def greedy_batch() -> _Outcome:
        width = max(len(ids) for ids in prompt_ids)
        pad = eos if eos is not None else 0
        x = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompt_ids], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompt_ids], device=device)
        with torch.no_grad():
            y = policy.generate(
                x, attention_mask=mask, do_sample=False, max_new_tokens=config.max_new_tokens, pad_token_id=pad
            )
        outs = []
        for row in y[:, width:].tolist():  # a finished row is padded with eos to the batch's length
            outs.append(row[: row.index(eos) + 1] if eos is not None and eos in row else row)
        return _Outcome(outs, policy_forward_passes=y.shape[1] - width, reward_calls=0)

    def ggro_runner(decoder: GGRODecoder, batched: bool) -> Callable[[], _Outcome]:
        def run() -> _Outcome:
            if batched:
                results = decoder.generate_ids(prompt_ids)
            else:
                results = [decoder.generate_ids([ids])[0] for ids in prompt_ids]
            return _ggro_outcome(results, eos, batched)

        return run

    def release_structure(reference: HFRewardModel) -> Callable[[], _Outcome]:
        cfg = reference_config

        def run() -> _Outcome:
            outs = []
            passes = calls = 0
            for ids in prompt_ids:
                n = naive_ggro_generate(
                    policy,
                    reference.model,
                    tokenizer,
                    ids,
                    max_new_tokens=cfg.max_new_tokens,
                    entropy_threshold=cfg.entropy_threshold,
                    min_segment_tokens=cfg.min_segment_tokens,
                    refinement_steps=cfg.refinement_steps,
                    first_insertion_offset=cfg.first_insertion_offset,
                    nudge_top_k=cfg.nudge_top_k,
                    retokenize_between_segments=cfg.retokenize_between_segments,
                    eos_token_id=eos,
                    mimic_release_overheads=True,
                )
                outs.append(n.response_ids)
                passes += n.policy_forward_passes
                calls += n.reward_calls
            return _Outcome(outs, policy_forward_passes=passes, reward_calls=calls)

        return run

    for name in names:
        if name == "greedy":
            runners[name] = greedy
        elif name == "greedy-batch":
            runners[name] = greedy_batch
        elif name in _REFERENCE_METHODS:
            if models.reference_reward is None:
                skipped[name] = models.reference_note
            elif name == "reference":
                decoder = GGRODecoder(policy, tokenizer, models.reference_reward, reference_config)
                runners[name] = ggro_runner(decoder, batched=False)
            else:
                runners[name] = release_structure(models.reference_reward)
        elif models.reward is None:
            skipped[name] = "no reward loaded"
        else:
            options = method_options(name)
            missing = sorted(set(options) - fields)
            if missing:
                skipped[name] = f"GGROConfig has no {', '.join(missing)} in this checkout"
                continue
            try:
                method_config = GGROConfig.model_validate({**config.model_dump(), **options}) if options else config
            except ValueError as exc:
                skipped[name] = f"its configuration is invalid here: {exc}"
                continue
            decoder = GGRODecoder(policy, tokenizer, models.reward, method_config)
            runners[name] = ggro_runner(decoder, batched=name in _BATCHED)
    return runners, skipped


# ---------------------------------------------------------------------------------------------- the run


def run_bench(settings: BenchSettings, models: BenchModels | None = None) -> int:
    """Run the benchmark, print (and with ``out``, write) the report; with ``json``, its last stdout line is
    the report as one JSON object. ``models``: use these instead of loading them from the settings (peak
    memory is then measured on CUDA only). Returns 0 when every method ran and every identity pair decoded
    the same tokens, else 1."""
    config = settings.config
    device = torch.device(settings.device)
    names = settings.selected()
    injected = models is not None
    if models is None:
        models = _load_models(settings, names)
    prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(settings.prompts)]
    prompt_ids = [encode_prompt(models.tokenizer, p) for p in prompts]
    runners, skipped = _method_runners(names, models, config, prompt_ids, device)
    for name, why in skipped.items():
        print(f"note: skipping {name}: {why}", flush=True)

    if settings.memory_probe:
        # Child process of a CPU run: one method, peak RSS over the RSS held once its models are loaded.
        run = runners[settings.memory_probe]
        with torch.no_grad():  # page in every weight (safetensors are mmap'ed) so the base holds them all
            modules = [models.policy]
            for rm in (models.reward, models.reference_reward):
                for attribute in ("model", "backbone"):
                    inner = getattr(rm, attribute, None)
                    if isinstance(inner, torch.nn.Module):
                        modules.append(inner)
            for module in modules:
                for p in module.parameters():
                    p.sum()
        base = _rss_now()
        _peak_memory_reset(device)
        run()
        print(json.dumps({"base": base, "peak": _peak_memory(device)}))
        return 0

    times: dict[str, list[float]] = {n: [] for n in runners}
    outcomes: dict[str, _Outcome] = {}
    failed: dict[str, str] = {}
    cuda_peaks: dict[str, float] = {}
    cuda_base = float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0.0
    for run_index in range(settings.runs):
        for name, run in runners.items():
            if name in failed:
                continue
            _peak_memory_reset(device)
            start = time.perf_counter()
            try:
                outcome = run()
            except Exception as exc:  # a method that is not implemented (yet) here is reported, not fatal
                failed[name] = f"{type(exc).__name__}: {exc}"
                print(f"note: {name} failed: {failed[name]}", flush=True)
                continue
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
            outcomes[name] = outcome
            if device.type == "cuda":
                cuda_peaks[name] = max(cuda_peaks.get(name, 0.0), _peak_memory(device))
        done = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v and k not in failed)
        print(f"run {run_index + 1}/{settings.runs}: {done}", flush=True)

    ran = [n for n in runners if n not in failed]
    memory: dict[str, tuple[float, float]] = {}  # base, peak
    if settings.memory and device.type == "cuda":
        memory = {n: (cuda_base, cuda_peaks[n]) for n in ran}
    elif settings.memory and injected:
        print("note: peak memory on CPU needs fresh processes that load the models: not measured", flush=True)
    elif settings.memory:
        # The CPU allocator keeps freed memory, so peaks are only comparable from fresh processes.
        memory = _cpu_peaks_in_subprocesses(settings, ran)

    med = {n: statistics.median(times[n]) for n in ran}
    rows: dict[str, dict[str, Any]] = {}
    for name in runners:
        if name in failed:
            rows[name] = {
                "median_s": None,
                "x_greedy": None,
                "policy_forward_passes": None,
                "reward_calls": None,
                "peak_mem_x_greedy": None,
                "error": failed[name],
            }
            continue
        outcome = outcomes[name]
        row: dict[str, Any] = {
            "median_s": med[name],
            "x_greedy": med[name] / med["greedy"] if "greedy" in med and med["greedy"] > 0 else None,
            "policy_forward_passes": outcome.policy_forward_passes,
            "reward_calls": outcome.reward_calls,
            "peak_mem_x_greedy": None,
            "runs_s": times[name],
            "tokens": sum(len(o) for o in outcome.outputs),
        }
        if name in memory:
            base, peak = memory[name]
            row["peak_mem_bytes"] = peak
            if "greedy" in memory:
                g_base, g_peak = memory["greedy"]
                row["peak_mem_x_greedy"] = peak / g_peak
                row["extra_mem_x_greedy"] = (peak - base) / (g_peak - g_base) if g_peak > g_base else None
        if name in _PROFILED:
            row["profile"] = outcome.profile
        if method_options(name):
            row["options"] = method_options(name)
        rows[name] = row

    identical = {
        f"{a}={b}": outcomes[a].outputs == outcomes[b].outputs
        for a, b in IDENTITY_PAIRS
        if a in outcomes and b in outcomes and a not in failed and b not in failed
    }
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    reward_name = models.reward.name if models.reward is not None else None
    report: dict[str, Any] = {
        "device": f"{device.type} ({device_name}, {torch.get_num_threads()} threads)",
        "policy": models.policy_name,
        "reward": reward_name,
        "settings": {
            "prompts": len(prompts),
            "runs": settings.runs,
            "max_new_tokens": config.max_new_tokens,
            "dtype": settings.dtype,
            "config": _changed_options(config, GGROConfig()),
            "reference_config": f"GGROConfig.reference(max_new_tokens={config.max_new_tokens})",
            "reference_reward": models.reference_reward.name if models.reference_reward is not None else None,
            "fast_early_exit_gain": FAST_EARLY_EXIT_GAIN,
            "memory": bool(memory),
        },
        "methods": rows,
        "identical": identical,
        "skipped": skipped,
    }
    markdown = _markdown(report)
    print(markdown)
    if settings.out:
        _write_section(Path(settings.out), report, markdown)
    if settings.json:
        print(json.dumps(report))
    return 0 if not failed and all(identical.values()) else 1


def _changed_options(config: GGROConfig, baseline: GGROConfig) -> dict[str, Any]:
    """The options where ``config`` departs from ``baseline``, with ``max_new_tokens`` always."""
    base = baseline.model_dump()
    changed = {k: v for k, v in config.model_dump().items() if v != base[k]}
    return {"max_new_tokens": config.max_new_tokens, **changed}


def _section_key(report: dict[str, Any]) -> str:
    return f"{report['device']}|{report['settings']['dtype']}|{report['policy']} + {report['reward']}"


def _write_section(path: Path, report: dict[str, Any], markdown: str) -> None:
    """Write ``markdown`` as this device/dtype/model section of ``path``, keeping the other sections."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    section = f"<!-- bench:{_section_key(report)} -->\n"
    kept = [s for s in previous.split("\n<!-- bench:") if s and not s.startswith(section[len("<!-- bench:") :])]
    header = "# Benchmarks\n\nRegenerate with `ggro bench --out docs/benchmarks.md` (see README).\n"
    body = [s if s.startswith("<!-- bench:") else "<!-- bench:" + s for s in kept if not s.startswith("# ")]
    path.write_text(header + "\n" + "\n".join([*body, section + markdown]), encoding="utf-8")


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    per_method = [f"{name} {row['options']}" for name, row in report["methods"].items() if row.get("options")]
    options = f", and per method: {'; '.join(per_method)}" if per_method else ""
    lines = [
        f"## {report['policy']} + {report['reward']} on {report['device']}, {s['dtype']}",
        "",
        f"{s['prompts']} prompts, median of {s['runs']} runs, max_new_tokens={s['max_new_tokens']}. Policy: "
        f"{report['policy']}; reward of the ggro methods: {report['reward']}; their GGROConfig (departures from "
        f"the defaults): `{s['config']}`{options}; -batch methods decode all prompts as one batch, the others "
        f"one prompt at a time. reference and release-structure: `{s['reference_config']}` with "
        f"{s['reference_reward'] or 'n/a'}.",
        "",
        "| method | median s | x greedy | policy forwards | reward calls | peak mem x greedy |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["methods"].items():
        if r.get("error"):
            lines.append(f"| {name} | failed: {r['error']} | - | - | - | - |")
            continue
        lines.append(
            f"| {name} | {_number(r['median_s'])} | {_number(r['x_greedy'])} | "
            f"{_number(r['policy_forward_passes'])} | {_number(r['reward_calls'])} | "
            f"{_number(r['peak_mem_x_greedy'])} |"
        )
    lines.append("")
    if report["identical"]:
        pairs = ", ".join(f"{k} **{v}**" for k, v in report["identical"].items())
        lines.append(f"Same tokens for every prompt: {pairs}.")
    if report["skipped"]:
        lines.append("Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items()) + ".")
    lines += [
        "",
        "Where the time went (seconds, summed over the prompts of the last run, from the results' timing; for "
        "-batch methods the policy time is the batch's, the reward time the sum over its responses):",
        "",
        "| method | policy forward | reward forward | backward | grammar | other | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["methods"].items():
        if "profile" not in r:
            continue
        p = r["profile"]
        if p is None:
            lines.append(f"| {name} | n/a | n/a | n/a | n/a | n/a | n/a |")
        else:
            parts = ("policy_forward", "reward_forward", "backward", "grammar", "other", "total")
            lines.append(f"| {name} | " + " | ".join(_number(p[k]) for k in parts) + " |")
    lines += [
        "",
        "Policy forwards: the policy's forward calls (a batch's pass counts once; greedy: one per new token). "
        "Peak memory: CUDA allocator peak on GPU; on CPU the peak RSS of a fresh process that loads only what the "
        "method needs and runs it once (model weights included)."
        + ("" if s["memory"] else " Not measured in this run."),
    ]
    return "\n".join(lines) + "\n"
