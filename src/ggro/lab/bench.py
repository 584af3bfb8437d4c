"""`ggro bench`: plain greedy vs GGRO (ours) vs the same algorithm with the release's structure.

All methods run side by side in one process on the same prompts; each is timed ``runs`` times and the
median is reported. The release-structure run (``baseline.naive_ggro_generate``: fresh prefill for every
refinement, RM over the full text through one-hot x embedding, plus its discarded soft pass) must give
the same tokens as ours; the report says whether it did.
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import GGROConfig
from ..decoder import GGRODecoder
from ..rewards.hf import HFRewardModel
from .baseline import naive_ggro_generate

__all__ = ["BENCH_PROMPTS", "BenchSettings", "run_bench"]

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


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark run measures. ``config`` is the GGRO configuration of both GGRO sides; the release
    structure reads its segment options (steps, threshold, offset, top-k, budget, text round trip) from it,
    so outputs can only be identical under the release's semantics (``GGROConfig.reference()``, the default)."""

    config: GGROConfig = field(default_factory=lambda: GGROConfig.reference(max_new_tokens=48))
    prompts: int = 8
    runs: int = 3
    device: str = "cpu"
    dtype: str = "float32"
    synthetic_1b: bool = False
    """Randomly initialised ~1B Llama-shaped policy and RM instead of the embedded ones (for GPU runs)."""
    tokenizer: str | None = None
    """Tokenizer id or path for ``synthetic_1b`` (default: the embedded policy's)."""
    json: bool = False
    """Also print the report as one JSON line."""
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


@dataclass
class _Method:
    name: str
    run: Callable[[], list[list[int]]]


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


def _cpu_peaks_in_subprocesses(settings: BenchSettings, names: list[str]) -> tuple[float, dict[str, float]]:
    """Run each method once in its own process; returns (mean base RSS, peak RSS per method)."""
    peaks: dict[str, float] = {}
    bases = []
    for name in names:
        probe_settings = {**_settings_json(settings), "memory_probe": name, "json": False, "out": None}
        code = "import json, sys; from ggro.lab.bench import probe_memory; probe_memory(json.loads(sys.argv[1]))"
        cmd = [sys.executable, "-c", code, json.dumps(probe_settings)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        probe = json.loads(done.stdout.strip().splitlines()[-1])
        peaks[name] = probe["peak"]
        bases.append(probe["base"])
        print(
            f"memory probe {name}: peak {probe['peak'] / 2**20:.0f} MiB (base {probe['base'] / 2**20:.0f} MiB)",
            flush=True,
        )
    return statistics.mean(bases), peaks


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


def _settings_json(settings: BenchSettings) -> dict[str, Any]:
    values = {name: getattr(settings, name) for name in BenchSettings.__dataclass_fields__}
    values["config"] = settings.config.model_dump()
    return values


def probe_memory(settings_json: dict[str, Any]) -> None:
    """Child-process entry of a CPU memory probe: settings as :func:`_settings_json` wrote them."""
    values = dict(settings_json)
    values["config"] = GGROConfig.model_validate(values["config"])
    run_bench(BenchSettings(**values))


def run_bench(settings: BenchSettings) -> int:
    """Run the benchmark, print (and with ``out``, write) the report. Returns 0 when GGRO's outputs equal the
    release structure's, else 1."""
    config = settings.config
    device = torch.device(settings.device)
    dtype = getattr(torch, settings.dtype)
    if settings.synthetic_1b:
        policy, tokenizer, reward = _synthetic_models(settings.device, dtype, settings.tokenizer)
        model_name = "random Llama ~1B (16 layers, hidden 2048)"
    else:
        from ..loading import REFERENCE_REWARD, load_policy, load_reward

        policy, tokenizer = load_policy(None, dtype=dtype, device=device)
        reference = load_reward(REFERENCE_REWARD, dtype=dtype, device=device)
        assert isinstance(reference, HFRewardModel)  # the release structure needs the HF model inside
        reward = reference
        model_name = "SmolLM2-135M-Instruct + seeded reference RM head"
    decoder = GGRODecoder(policy, tokenizer, reward, config)
    prompts = [BENCH_PROMPTS[i % len(BENCH_PROMPTS)] for i in range(settings.prompts)]
    prompt_ids = [decoder.encode_prompt(p) for p in prompts]
    eos = tokenizer.eos_token_id

    def greedy() -> list[list[int]]:
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
        return outs

    stats: dict[str, dict[str, float]] = {}

    def ours() -> list[list[int]]:
        outs = []
        passes = rm_calls = 0
        for ids in prompt_ids:
            (r,) = decoder.generate_ids([ids])
            outs.append(r.token_ids + ([eos] if r.finish_reason == "stop" else []))
            passes += r.usage.policy_forward_passes
            rm_calls += r.usage.reward_calls
        stats["ggro (ours)"] = {"policy_forward_passes": passes, "reward_calls": rm_calls}
        return outs

    def ours_batched() -> list[list[int]]:
        results = decoder.generate_ids(prompt_ids)
        stats["ggro (ours, one batch)"] = {
            "policy_forward_passes": results[0].usage.policy_forward_passes,
            "reward_calls": sum(r.usage.reward_calls for r in results),
        }
        return [r.token_ids + ([eos] if r.finish_reason == "stop" else []) for r in results]

    def release_structure() -> list[list[int]]:
        outs = []
        passes = rm_calls = 0
        for ids in prompt_ids:
            n = naive_ggro_generate(
                policy,
                reward.model,
                tokenizer,
                ids,
                max_new_tokens=config.max_new_tokens,
                entropy_threshold=config.entropy_threshold,
                min_segment_tokens=config.min_segment_tokens,
                refinement_steps=config.refinement_steps,
                first_insertion_offset=config.first_insertion_offset,
                nudge_top_k=config.nudge_top_k,
                retokenize_between_segments=config.retokenize_between_segments,
                eos_token_id=eos,
                mimic_release_overheads=True,
            )
            outs.append(n.response_ids)
            passes += n.policy_forward_passes
            rm_calls += n.reward_calls
        stats["release structure"] = {"policy_forward_passes": passes, "reward_calls": rm_calls}
        return outs

    methods = [
        _Method("greedy generate", greedy),
        _Method("ggro (ours)", ours),
        _Method("ggro (ours, one batch)", ours_batched),
        _Method("release structure", release_structure),
    ]
    if settings.memory_probe:
        # Child process of a CPU run: one method, peak RSS over the RSS held after loading the models.
        (method,) = [m for m in methods if m.name == settings.memory_probe]
        with torch.no_grad():  # page in every weight (safetensors are mmap'ed) so the base holds them all
            for p in [*policy.parameters(), *reward.model.parameters()]:
                p.sum()
        base = _rss_now()
        _peak_memory_reset(device)
        method.run()
        print(json.dumps({"base": base, "peak": _peak_memory(device)}))
        return 0

    times: dict[str, list[float]] = {m.name: [] for m in methods}
    peaks: dict[str, float] = {}
    outputs: dict[str, list[list[int]]] = {}
    base_memory = float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0.0
    for run in range(settings.runs):
        for m in methods:
            _peak_memory_reset(device)
            start = time.perf_counter()
            outputs[m.name] = m.run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[m.name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[m.name] = max(peaks.get(m.name, 0.0), _peak_memory(device))
        print(f"run {run + 1}/{settings.runs}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    if device.type != "cuda":
        # The CPU allocator keeps freed memory, so peaks are only comparable from fresh processes.
        base_memory, peaks = _cpu_peaks_in_subprocesses(settings, [m.name for m in methods])

    identical = outputs["ggro (ours)"] == outputs["release structure"]
    batch_identical = outputs["ggro (ours)"] == outputs["ggro (ours, one batch)"]
    med = {k: statistics.median(v) for k, v in times.items()}
    greedy_extra = peaks["greedy generate"] - base_memory
    rows = []
    for m in methods:
        extra = peaks[m.name] - base_memory
        rows.append(
            {
                "method": m.name,
                "median_seconds": med[m.name],
                "runs_seconds": times[m.name],
                "vs_greedy": med[m.name] / med["greedy generate"],
                "release_structure_over_this": med["release structure"] / med[m.name],
                "peak_memory_bytes": peaks[m.name],
                "peak_memory_vs_greedy": peaks[m.name] / peaks["greedy generate"],
                "extra_memory_vs_greedy": extra / greedy_extra if greedy_extra > 0 else float("nan"),
                **stats.get(m.name, {}),
            }
        )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    report = {
        "device": f"{device.type} ({device_name}, {torch.get_num_threads()} threads)",
        "models": model_name,
        "dtype": settings.dtype,
        "prompts": len(prompts),
        "runs": settings.runs,
        "settings": {
            "refinement_steps": config.refinement_steps,
            "entropy_threshold": config.entropy_threshold,
            "max_new_tokens": config.max_new_tokens,
            **_changed_options(config),
        },
        "outputs_identical_ours_vs_release_structure": identical,
        "outputs_identical_batched_vs_one_at_a_time": batch_identical,
        "rows": rows,
    }
    if settings.json:
        print(json.dumps(report))
    markdown = _markdown(report)
    print(markdown)
    if settings.out:
        path = Path(settings.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = path.read_text(encoding="utf-8") if path.exists() else ""
        section = f"<!-- bench:{report['device']}|{settings.dtype}|{model_name} -->\n"
        kept = [s for s in previous.split("\n<!-- bench:") if s and not s.startswith(section[len("<!-- bench:") :])]
        header = "# Benchmarks\n\nRegenerate with `ggro bench --out docs/benchmarks.md` (see README).\n"
        body = [s if s.startswith("<!-- bench:") else "<!-- bench:" + s for s in kept if not s.startswith("# ")]
        path.write_text(header + "\n" + "\n".join([*body, section + markdown]), encoding="utf-8")
    return 0 if identical else 1


def _changed_options(config: GGROConfig) -> dict[str, Any]:
    """The options where ``config`` departs from the reference preset (the benchmark's usual setting)."""
    reference = GGROConfig.reference().model_dump()
    shown = {"refinement_steps", "entropy_threshold", "max_new_tokens"}
    return {k: v for k, v in config.model_dump().items() if k not in shown and v != reference[k]}


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"## {report['models']} on {report['device']}, {report['dtype']}",
        "",
        f"{report['prompts']} prompts, median of {report['runs']} runs, settings {report['settings']}. "
        f"Outputs identical, ours vs release structure: **{report['outputs_identical_ours_vs_release_structure']}**;"
        f" batched vs one at a time: **{report['outputs_identical_batched_vs_one_at_a_time']}**.",
        "",
        "| method | median s | x greedy time | release structure / this | policy forwards | RM calls "
        "| peak mem x greedy | extra mem x greedy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['method']} | {r['median_seconds']:.2f} | {r['vs_greedy']:.2f} | "
            f"{r['release_structure_over_this']:.2f} | {r.get('policy_forward_passes', '-')} | "
            f"{r.get('reward_calls', '-')} | {r['peak_memory_vs_greedy']:.2f} | {r['extra_memory_vs_greedy']:.2f} |"
        )
    lines.append("")
    lines.append(
        "Peak memory: CUDA allocator peak on GPU; on CPU the peak RSS of a fresh process running the method once "
        "(model weights included). 'extra' = peak minus the memory held once the models are loaded, as a ratio "
        "to greedy's extra."
    )
    return "\n".join(lines) + "\n"
