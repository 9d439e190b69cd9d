"""InstantStyle benchmark (issue 5, item 5): IP-Adapter in the style block only vs in every block, one UNet.

    .venv/bin/python benchmarks/bench_instantstyle.py                                    # tiny SDXL-like, ~1 min
    .venv/bin/python benchmarks/bench_instantstyle.py --size sdxl --resolution 512       # SDXL architecture, ~10 min

One denoising step = one UNet forward on the classifier-free-guidance batch (negative + positive), with the
IP-Adapter image tokens in ``added_cond_kwargs`` exactly as ``StableDiffusionXLPipeline`` passes them. The UNet
(random weights, published config for ``sdxl``/``sd15``) gets a random IP-Adapter through diffusers'
``load_ip_adapter``; the same UNet is then timed with the adapter on in

- ``all``: every IP-Adapter processor (a plain IP-Adapter),
- ``style``: the style preset only (SDXL ``up_blocks.0.attentions.1``; SD 1.5 ``up_blocks.1``),
- ``off``: no processor (all scales 0): the floor, what any block choice can save at most.

Besides time, each variant's FLOPs per step are counted (``torch.utils.flop_counter``), which shows how much of a
step the image-token attention is, independent of the machine's load.

A processor with scale 0 skips its image-token attention entirely (``IPAdapterAttnProcessor2_0``). Timings
alternate the three within each repetition (order reversed every other repetition) and report medians; ratios are
medians of per-repetition ratios, so slow drift from other work on the machine cancels. Target: style / all <= 0.95.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from stylecraft.instantstyle import resolve_blocks, set_ip_adapter_blocks
from stylecraft.random_sd import UNET_CONFIGS, build_unet, ip_adapter_state_dict

# IP-Adapter image embedding size per architecture: OpenCLIP bigG (SDXL) and ViT-H (SD 1.5) projections.
EMBED_DIM = {"sdxl": 1280, "sd15": 1024, "tiny-sdxl": 16, "tiny-sd15": 16}
POOLED_TEXT_DIM = {"sdxl": 1280, "tiny-sdxl": 16}  # text_encoder_2's projection (SDXL added conditioning)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """torch's FLOP counter knows the GPU attention kernels only; CPU attention costs the same FLOPs."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def unet_with_ip_adapter(size: str, device: str = "cpu"):
    """The UNet of ``size`` inside a components-free pipeline, with a random IP-Adapter loaded by diffusers.

    ``device="meta"`` builds it without memory or weights: enough to count FLOPs at any size in a second.
    """
    with torch.device(device):
        unet = build_unet(size)
    scheduler = EulerDiscreteScheduler(steps_offset=1)
    if "sdxl" in size:
        pipe = StableDiffusionXLPipeline(
            vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
            scheduler=scheduler,
        )  # fmt: skip
    else:
        pipe = StableDiffusionPipeline(
            vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe.load_ip_adapter(
        ip_adapter_state_dict(unet, EMBED_DIM[size]), subfolder="", weight_name="", image_encoder_folder=None
    )
    return pipe.unet


def step_inputs(size: str, resolution: int) -> dict:
    """One CFG denoising step's UNet inputs: batch 2 (negative, positive), 77 text tokens, one style image."""
    config = UNET_CONFIGS[size]
    latent = resolution // 8 if size in ("sdxl", "sd15") else resolution // 2  # tiny VAEs downsample by 2
    generator = torch.Generator().manual_seed(0)
    image_embeds = torch.randn(1, 1, EMBED_DIM[size], generator=generator)
    added = {"image_embeds": [torch.cat([torch.zeros_like(image_embeds), image_embeds])]}  # [2, 1, D]
    if "sdxl" in size:
        added["text_embeds"] = torch.randn(2, POOLED_TEXT_DIM[size], generator=generator)
        added["time_ids"] = torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]] * 2, dtype=torch.float
        )
    return {
        "sample": torch.randn(2, 4, latent, latent, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(2, 77, config["cross_attention_dim"], generator=generator),
        "added_cond_kwargs": added,
    }


def count_flops(size: str, resolution: int) -> tuple[dict[str, int], dict[str, str]]:
    """FLOPs of one step per variant, on a meta-device copy (no weights, no time: any size in seconds).

    Also returns how many IP-Adapter processors each variant leaves on ("10/70").
    """
    unet = unet_with_ip_adapter(size, device="meta")
    inputs = step_inputs(size, resolution)
    meta = {key: value.to("meta") for key, value in inputs.items() if torch.is_tensor(value)}
    added = {key: value.to("meta") for key, value in inputs["added_cond_kwargs"].items() if torch.is_tensor(value)}
    added["image_embeds"] = [embeds.to("meta") for embeds in inputs["added_cond_kwargs"]["image_embeds"]]
    flops, active = {}, {}
    total = len(set_ip_adapter_blocks(unet, resolve_blocks(unet, "all")))
    for name, blocks in (("all", "all"), ("style", "style"), ("off", [])):
        active[name] = f"{len(set_ip_adapter_blocks(unet, resolve_blocks(unet, blocks) if blocks else []))}/{total}"
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            unet(**meta, added_cond_kwargs=added)
        flops[name] = counter.get_total_flops()
    return flops, active


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "sdxl", "sd15", "tiny-sd15"], default="tiny")
    parser.add_argument(
        "--resolution", type=int, default=None, help="image side (default 32 tiny, 1024 sdxl, 512 sd15)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 20 tiny, 3 real)")
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs only (seconds, any size)")
    args = parser.parse_args()
    size = "tiny-sdxl" if args.size == "tiny" else args.size
    resolution = args.resolution or {"sdxl": 1024, "sd15": 512}.get(size, 32)
    repeats = args.repeats or (3 if size in ("sdxl", "sd15") else 20)
    variants = ("all", "style", "off")
    flops, active = count_flops(size, resolution)
    seconds: dict[str, list[float]] = {name: [] for name in variants}

    if not args.flops_only:
        torch.manual_seed(0)
        unet = unet_with_ip_adapter(size)
        inputs = step_inputs(size, resolution)
        blocks = {"all": resolve_blocks(unet, "all"), "style": resolve_blocks(unet, "style"), "off": []}

        def step(name: str) -> float:
            set_ip_adapter_blocks(unet, blocks[name], scale=1.0)
            start = time.perf_counter()
            with torch.no_grad():
                unet(**inputs)
            return time.perf_counter() - start

        for name in variants:  # warm-up
            step(name)
        for repeat in range(repeats):
            for name in variants if repeat % 2 == 0 else reversed(variants):
                seconds[name].append(step(name))

    print(
        f"InstantStyle denoising step, {size} UNet (random weights), {resolution}x{resolution}, CFG batch 2, fp32 CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}; "
        + ("FLOPs only" if args.flops_only else f"{repeats} repetitions, medians")
    )
    print(f"{'blocks':<6} {'IP on':>6} {'s / step':>10} {'time vs all':>12} {'GFLOP / step':>13} {'FLOPs vs all':>13}")
    for name in variants:
        if seconds[name]:
            time_ratio = statistics.median(s / a for s, a in zip(seconds[name], seconds["all"], strict=True))
            timing = f"{statistics.median(seconds[name]):>10.4f} {time_ratio:>12.3f}"
        else:
            timing = f"{'-':>10} {'-':>12}"
        flop_ratio = flops[name] / flops["all"]
        print(f"{name:<6} {active[name]:>6} {timing} {flops[name] / 1e9:>13.3f} {flop_ratio:>13.5f}")


if __name__ == "__main__":
    main()
