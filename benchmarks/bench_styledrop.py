"""StyleDrop core benchmarks (issue 2, item 8): compared things run side by side in one process, reported as ratios.

    .venv/bin/python benchmarks/bench_styledrop.py                                   # tiny, ~1 min
    .venv/bin/python benchmarks/bench_styledrop.py --size amused-256 --repeats 3     # real architecture, ~10 min

Sections (targets from issue 2):
1. our sampler (``sample_tokens``) vs diffusers' ``AmusedPipeline`` on the same weights, tokens only on both sides
   (``output_type="latent"``, no VQ decode): seconds per image, pipeline / ours >= 1.0.
2. StyleDrop guidance (Eq. 4: adapter on t, base on t, base on n, one batched forward) vs two-pass Muse CFG
   (Eq. 1): Eq. 4 / CFG <= 1.6.
3. train step (mask -> forward -> loss -> backward -> clip -> AdamW step) of the paper's adapter vs peft LoRA r=16
   on to_q/to_k/to_v: adapter <= LoRA in time and in memory. Each variant runs in a fresh process (rounds
   interleave the variants); memory is that process's peak RSS during the steps above its RSS before them: the
   kernel's high-water mark is reset (``/proc/self/clear_refs``, 5) after the model is built, then read back as
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss``.
4. trainable parameters as a share of the aMUSEd-256 transformer (always the real architecture, built on the meta
   device: no memory, no time): < 1 % at d_prj 32, ~0.04 % at d_prj 4 shared.
5. the transformer forward's achieved FLOP/s (FLOPs from ``torch.utils.flop_counter.FlopCounterMode``) as a share
   of this CPU's fp32 matmul peak (a 2048 x 2048 matmul timed in the same repetitions).

Timings alternate the compared things within each repetition (order reversed every other repetition) and report
medians; a ratio is the median of the per-repetition ratios, so slow drift from other work on the machine cancels.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch.utils.flop_counter import FlopCounterMode

from stylecraft.adapters import AdaptedTransformer, count_parameters
from stylecraft.muse import MuseModel, build_random_muse, mask_tokens, masked_token_loss
from stylecraft.sampling import SamplingConfig, sample_tokens

PROMPTS = ["A house in watercolor painting style", "A cat in watercolor painting style"]
# Train-step variants: (adapter type, rank, shared, routed). "routed" = through AdaptedTransformer.route, the path
# stylecraft's training loop takes; unrouted LoRA is plain peft (its active adapter), the reference point.
VARIANTS = {
    "styledrop d_prj 4 shared": ("styledrop", 4, True, True),
    "styledrop d_prj 32": ("styledrop", 32, False, True),
    "lora r=16 q/k/v (routed)": ("lora", 16, False, True),
    "lora r=16 q/k/v (plain peft)": ("lora", 16, False, False),
}
# Per size: sampling steps, prompts per sampling call, train batch, timed train steps per process.
SETTINGS = {
    "tiny": {"steps": 12, "prompts": 2, "train_batch": 8, "train_steps": 10},
    "amused-256": {"steps": 3, "prompts": 1, "train_batch": 1, "train_steps": 2},
}
GUIDANCE = 10.0


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each candidate: one warm-up call each, then ``repeats`` alternating rounds."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repetitions of numerator_i / denominator_i."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


# ---- 1. our sampler vs AmusedPipeline ---------------------------------------------------------------------------
def bench_sampler(muse: MuseModel, settings: dict, repeats: int, seed: int) -> dict:
    pipe = muse.reference_pipeline()  # AmusedPipeline on the same components
    prompts, steps = PROMPTS[: settings["prompts"]], settings["steps"]
    config = SamplingConfig(steps=steps, guidance_scale=GUIDANCE)

    def ours() -> torch.Tensor:
        return sample_tokens(muse, prompts, config, generator=torch.Generator().manual_seed(seed), progress=False)

    def pipeline() -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return pipe(prompts, num_inference_steps=steps, guidance_scale=GUIDANCE, generator=generator,
                    output_type="latent").images  # fmt: skip

    identical = torch.equal(ours(), pipeline())  # same work, same answer
    times = interleaved({"ours": ours, "pipeline": pipeline}, repeats)
    images = len(prompts)
    return {
        "steps": steps,
        "images_per_call": images,
        "decode": False,
        "identical_tokens": identical,
        "ours_s_per_image": statistics.median(times["ours"]) / images,
        "pipeline_s_per_image": statistics.median(times["pipeline"]) / images,
        "ratio_pipeline_over_ours": paired_ratio(times["pipeline"], times["ours"]),
        "times": times,
    }


# ---- 2. Eq. 4 (three passes) vs CFG (two passes) ----------------------------------------------------------------
def bench_guidance(muse: MuseModel, settings: dict, repeats: int, seed: int) -> dict:
    model = AdaptedTransformer(muse)
    model.add_adapter("style", model.new_config("styledrop", rank=4, shared=True))
    model.eval()
    prompts, steps = PROMPTS[: settings["prompts"]], settings["steps"]
    cfg = SamplingConfig(steps=steps, guidance_scale=GUIDANCE)
    eq4 = SamplingConfig(steps=steps, guidance_scale=GUIDANCE, lambda_a=1.0)

    def run(config: SamplingConfig, adapter: str | None) -> Callable[[], torch.Tensor]:
        generator = torch.Generator()
        return lambda: sample_tokens(muse, prompts, config, model=model, adapter=adapter,
                                     generator=generator.manual_seed(seed), progress=False)  # fmt: skip

    times = interleaved({"cfg": run(cfg, None), "eq4": run(eq4, "style")}, repeats)
    return {
        "steps": steps,
        "images_per_call": len(prompts),
        "adapter": "styledrop d_prj 4 shared (fresh)",
        "cfg_s": statistics.median(times["cfg"]),
        "eq4_s": statistics.median(times["eq4"]),
        "ratio_eq4_over_cfg": paired_ratio(times["eq4"], times["cfg"]),
        "times": times,
    }


# ---- 3. train step: paper adapter vs LoRA, one fresh process per variant and round --------------------------------
def train_step_worker(size: str, variant: str, batch: int, steps: int, threads: int) -> dict:
    """Build the model, add one adapter, time ``steps`` train steps after one warm-up; peak RSS above the start."""
    torch.set_num_threads(threads)
    adapter_type, rank, shared, routed = VARIANTS[variant]
    muse = build_random_muse(size)
    rows = ["bench"] * batch
    if routed:  # stylecraft's path: AdaptedTransformer, the adapter chosen per row
        model = AdaptedTransformer(muse)
        model.add_adapter("bench", model.new_config(adapter_type, rank, shared))
        parameters = model.adapter_parameters("bench")
        model.train()
    else:  # plain peft on the bare transformer, the way diffusers' aMUSEd LoRA recipe trains
        lora = LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v"])
        inject_adapter_in_model(lora, muse.transformer, adapter_name="bench")
        parameters = [p.requires_grad_(True) for n, p in muse.transformer.named_parameters() if "lora_" in n]
        muse.transformer.train()
    optimizer = torch.optim.AdamW(parameters, lr=3e-5, weight_decay=0.0)  # training.py's optimiser (Adam)
    generator = torch.Generator().manual_seed(0)
    side = muse.transformer.config.sample_size
    tokens = torch.randint(muse.transformer.config.codebook_size, (batch, side, side), generator=generator)
    pooled, hidden = muse.encode_prompts(PROMPTS[:1] * batch)
    micro_conds = muse.micro_conds(batch, muse.resolution, muse.resolution)

    def step() -> None:
        masked, mask = mask_tokens(tokens, muse.mask_token_id, generator)
        if routed:
            logits = model(rows, masked, hidden, pooled, micro_conds)  # [batch, codebook, h, w]
        else:
            logits = muse.transformer(masked, hidden, pooled, micro_conds)
        masked_token_loss(logits, tokens, mask).backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    gc.collect()
    rss_before_kb = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark to the current RSS
    step()  # warm-up: allocates Adam's state
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mb": peak_kb / 1024, "delta_mb": (peak_kb - rss_before_kb) / 1024}


def bench_train(size: str, settings: dict, rounds: int, threads: int) -> dict:
    names = list(VARIANTS)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                job = pool.submit(
                    train_step_worker, size, name, settings["train_batch"], settings["train_steps"], threads
                )
                runs[name].append(job.result())
    # Per-round step time = median of that process's steps; ratios pair variants of the same round.
    step_s = {name: [statistics.median(run["seconds"]) for run in runs[name]] for name in names}
    reference = "lora r=16 q/k/v (routed)"
    return {
        "batch": settings["train_batch"],
        "timed_steps_per_process": settings["train_steps"],
        "rounds": rounds,
        "variants": {
            name: {
                "step_s": statistics.median(step_s[name]),
                "time_vs_lora": paired_ratio(step_s[name], step_s[reference]),
                "delta_mb": statistics.median(run["delta_mb"] for run in runs[name]),
                "peak_mb": statistics.median(run["peak_mb"] for run in runs[name]),
                "runs": runs[name],
            }
            for name in names
        },
    }


# ---- 4. trainable parameters on the real aMUSEd-256 architecture --------------------------------------------------
def count_trainable() -> dict:
    with torch.device("meta"):  # shapes only: the 603 M-parameter transformer costs no memory here
        muse = build_random_muse("amused-256")
        model = AdaptedTransformer(muse)
        base = count_parameters(muse.transformer)
        counts = {}
        for name, (adapter_type, rank, shared, routed) in VARIANTS.items():
            if not routed:
                continue  # same parameters as the routed LoRA
            model.add_adapter(name, model.new_config(adapter_type, rank, shared))
            trainable = count_parameters(model.adapter_parameters(name))
            counts[name.removesuffix(" (routed)")] = {"trainable": trainable, "percent": 100 * trainable / base}
    return {"transformer_parameters": base, "adapters": counts}


# ---- 5. achieved FLOP/s of the transformer forward vs the fp32 matmul peak ----------------------------------------
def bench_flops(muse: MuseModel, repeats: int, batches: tuple[int, ...] = (1, 2, 3)) -> dict:
    side = muse.transformer.config.sample_size
    pooled, hidden = muse.encode_prompts(PROMPTS[:1])
    inputs = {
        b: (
            torch.randint(muse.transformer.config.codebook_size, (b, side, side)),
            hidden.expand(b, -1, -1),
            pooled.expand(b, -1),
            muse.micro_conds(b, muse.resolution, muse.resolution),
        )
        for b in batches
    }
    flops = {}
    with torch.no_grad():
        for b, args in inputs.items():
            with FlopCounterMode(display=False) as counter:
                muse.transformer(*args)
            flops[b] = counter.get_total_flops()
    n = 2048
    left, right = torch.randn(n, n), torch.randn(n, n)

    def matmul() -> None:
        for _ in range(3):
            left @ right

    def forward(b: int) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                muse.transformer(*inputs[b])

        return run

    times = interleaved({"matmul": matmul, **{f"forward_b{b}": forward(b) for b in batches}}, repeats)
    peak = [3 * 2 * n**3 / t for t in times["matmul"]]  # FLOP/s per repetition
    result = {"matmul_peak_gflops": statistics.median(peak) / 1e9, "forward": {}}
    for b in batches:
        achieved = [flops[b] / t for t in times[f"forward_b{b}"]]
        result["forward"][b] = {
            "gflop": flops[b] / 1e9,
            "seconds": statistics.median(times[f"forward_b{b}"]),
            "gflops": statistics.median(achieved) / 1e9,
            "share_of_peak": statistics.median(a / p for a, p in zip(achieved, peak, strict=True)),
        }
    return result


# ---- report -------------------------------------------------------------------------------------------------------
def machine() -> dict:
    return {
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.machine(),
        ),  # fmt: skip
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg": os.getloadavg(),
    }


def markdown(results: dict) -> str:
    s, g, t, c, f = (results[k] for k in ("sampler", "guidance", "train", "counts", "flops"))

    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    lines = [
        f"## StyleDrop benchmarks: {results['size']}, {results['repeats']} repetitions",
        "",
        f"Load average {results['machine']['loadavg_before']} before, {results['machine']['loadavg_after']} after "
        f"({results['machine']['cores']} cores, {results['machine']['torch_threads']} torch threads).",
        "",
        "| comparison | ours | reference | ratio | target | met |",
        "|---|---|---|---|---|---|",
        f"| sampler, s/image ({s['steps']} steps, CFG, tokens only, identical tokens: {s['identical_tokens']}) "
        f"| {s['ours_s_per_image']:.4g} | AmusedPipeline {s['pipeline_s_per_image']:.4g} "
        f"| pipeline/ours {s['ratio_pipeline_over_ours']:.3f} | >= 1.0 | {mark(s['ratio_pipeline_over_ours'] >= 1)} |",
        f"| guidance, s/call ({g['steps']} steps, {g['images_per_call']} images) | Eq. 4 {g['eq4_s']:.4g} "
        f"| CFG {g['cfg_s']:.4g} | Eq.4/CFG {g['ratio_eq4_over_cfg']:.3f} | <= 1.6 "
        f"| {mark(g['ratio_eq4_over_cfg'] <= 1.6)} |",
        "",
        f"Train step, batch {t['batch']}, {t['timed_steps_per_process']} timed steps per process, {t['rounds']} "
        "fresh processes per variant (time and memory ratios against routed LoRA):",
        "",
        "| variant | step s | time / LoRA | peak RSS MB | RSS above start MB | memory / LoRA |",
        "|---|---|---|---|---|---|",
    ]
    lora_delta = t["variants"]["lora r=16 q/k/v (routed)"]["delta_mb"]
    for name, v in t["variants"].items():
        lines.append(
            f"| {name} | {v['step_s']:.4g} | {v['time_vs_lora']:.3f} | {v['peak_mb']:.0f} | {v['delta_mb']:.0f} "
            f"| {v['delta_mb'] / lora_delta:.3f} |"
        )
    lines += [
        "",
        f"Trainable parameters on aMUSEd-256 (transformer: {c['transformer_parameters']:,}):",
        "",
        "| adapter | trainable | % of transformer |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {v['trainable']:,} | {v['percent']:.4f} |" for name, v in c["adapters"].items()]
    lines += [
        "",
        f"Transformer forward vs fp32 matmul peak (2048², {f['matmul_peak_gflops']:.1f} GFLOP/s measured):",
        "",
        "| batch | GFLOP | s | GFLOP/s | share of peak |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {b} | {v['gflop']:.4g} | {v['seconds']:.4g} | {v['gflops']:.4g} | {100 * v['share_of_peak']:.1f} % |"
        for b, v in f["forward"].items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SETTINGS), default="tiny", help="architecture (random weights)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repetitions (train: min(repeats, 3) fresh processes per variant)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (same on both sides)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write all results and raw timings here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    os.environ.setdefault("STYLECRAFT_QUIET", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SETTINGS[args.size]
    results: dict = {"size": args.size, "repeats": args.repeats, "machine": machine(), "seconds": {}}
    results["machine"]["loadavg_before"] = results["machine"].pop("loadavg")
    clock = time.time()

    def lap(name: str) -> None:
        nonlocal clock
        results["seconds"][name] = round(time.time() - clock, 1)
        clock = time.time()

    results["counts"] = count_trainable()
    lap("counts")
    # Train steps first, in child processes, while this process holds no model.
    results["train"] = bench_train(args.size, settings, min(args.repeats, 3), torch.get_num_threads())
    lap("train")
    torch.manual_seed(args.seed)
    muse = build_random_muse(args.size)
    lap("build")
    # The pipeline and FLOP benchmarks run before bench_guidance hooks an adapter into the transformer.
    results["sampler"] = bench_sampler(muse, settings, args.repeats, args.seed)
    lap("sampler")
    results["flops"] = bench_flops(muse, args.repeats)
    lap("flops")
    results["guidance"] = bench_guidance(muse, settings, args.repeats, args.seed)
    lap("guidance")
    results["machine"]["loadavg_after"] = os.getloadavg()
    print(markdown(results))
    print(f"\nseconds per section: {results['seconds']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
