"""Train shapes-sd's two add-ons on its frozen UNet: an IP-Adapter and a canny ControlNet.

    python -m stylecraft.world.pretrain ip-adapter --out runs/world/sd-ip-adapter --sd runs/world/sd-unet/shapes-sd
    python -m stylecraft.world.pretrain controlnet --out runs/world/sd-controlnet --sd runs/world/sd-unet/shapes-sd

The IP-Adapter follows its paper (Ye et al. 2023, arXiv 2308.06721) and the official training script: decoupled
cross-attention (a new ``to_k_ip``/``to_v_ip`` per cross-attention layer, started from that layer's ``to_k``/``to_v``)
and an image projection of the CLIP image embedding to 4 tokens; the base UNet frozen; the image, the text or both
dropped 5 % of the time each. The image encoder is the mini CLIP's vision tower as a
``CLIPVisionModelWithProjection``. It is saved in h94's layout, ``OUT/ip-adapter/ip-adapter.safetensors`` (keys
``image_proj.*`` and ``ip_adapter.{1,3,...}.to_{k,v}_ip.weight``) beside ``OUT/ip-adapter/image_encoder/``, so
``pipe.load_ip_adapter(OUT, subfolder="ip-adapter", weight_name="ip-adapter.safetensors")`` loads it unchanged.

The ControlNet (Zhang et al. 2023, arXiv 2302.05543) is ``ControlNetModel.from_unet(unet)``, trained on the canny
edges of the render (``instantstyle.canny_edges``, the same edges a content image gets) with the base frozen; saved
as ``OUT/controlnet/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import StylecraftError
from ..instantstyle import canny_edges, ip_adapter_processors
from . import renderer, space
from .oracles import Oracles, oracle_accuracy
from .pretrain import EVAL_SEED, Recipe, evaluation_oracles, finish, to_tensor, train_loop
from .train_sd import (
    LatentDiffusion,
    clip_folder,
    drop_captions,
    load_shapes_sd,
    sample,
    step_generator,
)

IP_ADAPTER_WEIGHTS = "ip-adapter.safetensors"
IMAGE_TOKENS = 4  # the basic IP-Adapter's image tokens (h94's ip-adapter_sd15)


def image_tower(folder: Path):
    """The mini CLIP's vision tower as an IP-Adapter image encoder (``CLIPVisionModelWithProjection``)."""
    from transformers import CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = CLIPModel.from_pretrained(folder, local_files_only=True)
    config = CLIPVisionConfig(**{**clip.config.vision_config.to_dict(), "projection_dim": clip.config.projection_dim})
    encoder = CLIPVisionModelWithProjection(config)
    encoder.vision_model.load_state_dict(clip.vision_model.state_dict())
    encoder.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    return encoder.eval().requires_grad_(False)


def initial_ip_adapter(unet, image_embed_dim: int) -> dict[str, dict[str, torch.Tensor]]:
    """A fresh IP-Adapter in h94's state-dict layout: each ``to_k_ip``/``to_v_ip`` a copy of its layer's
    ``to_k``/``to_v`` (the official training script's start), a random projection of the image embedding."""
    from diffusers.models.embeddings import ImageProjection

    ip_layers, key_id = {}, 1  # odd ids: the cross-attention (attn2) processor of each attn1/attn2 pair
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            attention = unet.get_submodule(name.removesuffix(".processor"))
            ip_layers[f"{key_id}.to_k_ip.weight"] = attention.to_k.weight.detach().clone()
            ip_layers[f"{key_id}.to_v_ip.weight"] = attention.to_v.weight.detach().clone()
            key_id += 2
    cross_dim = unet.config.cross_attention_dim
    projection = ImageProjection(image_embed_dim, cross_dim, num_image_text_embeds=IMAGE_TOKENS).state_dict()
    return {
        "image_proj": {k.replace("image_embeds", "proj"): v for k, v in projection.items()},
        "ip_adapter": ip_layers,
    }


def without_style(captions: list[str], keep: torch.Tensor) -> list[str]:
    """Captions that name only the content where ``keep`` is False ("a large red circle in <style> style" becomes
    "a large red circle"), as most alt-text names what a picture shows and not how it is drawn."""
    return [text if kept else text[: text.rindex(" in ")] for text, kept in zip(captions, keep.tolist(), strict=True)]


def earlier_ip_adapter(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """An earlier run's adapter (``extra.init``: its run folder) in ``initial_ip_adapter``'s nested layout."""
    from safetensors.torch import load_file

    weights = Path(path) / "ip-adapter" / IP_ADAPTER_WEIGHTS
    if not weights.is_file():
        raise StylecraftError(f"extra.init: no {weights}; name an ip-adapter run's output folder")
    flat, nested = load_file(weights), {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, name = key.split(".", 1)
        nested[group][name] = value
    return nested


def ip_adapter_state_dict(unet) -> dict[str, torch.Tensor]:
    """The IP-Adapter loaded in ``unet`` back in h94's flat layout (diffusers' loader renames ``proj`` to
    ``image_embeds`` and numbers the processors 1, 3, 5, ... in ``attn_processors`` order; this undoes both)."""
    projection = unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    flat = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in projection.items()}
    for i, processor in enumerate(ip_adapter_processors(unet).values()):
        flat[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = processor.to_k_ip[0].weight
        flat[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = processor.to_v_ip[0].weight
    return {key: value.detach().contiguous() for key, value in flat.items()}


def train_ip_adapter(
    recipe: Recipe, out: Path, resume: bool, sd_folder: Path, clip: Path | None, oracles: Path
) -> None:
    """Image-prompt training on seen-style renders: the reference image is the target image itself (paper §3.3)."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    pipe = load_shapes_sd(sd_folder)
    parts, unet, clip = LatentDiffusion.from_pipeline(pipe), pipe.unet, clip_folder(clip)
    image_encoder = image_tower(clip)
    torch.manual_seed(recipe.seed)
    if "init" in recipe.extra:
        adapter = earlier_ip_adapter(recipe.extra["init"])
    else:
        adapter = initial_ip_adapter(unet, image_encoder.config.projection_dim)
    pipe.load_ip_adapter(
        [adapter], subfolder=[""], weight_name=[""], image_encoder_folder=None, low_cpu_mem_usage=False
    )
    trained = torch.nn.ModuleDict(
        {"image_proj": unet.encoder_hid_proj, "ip_layers": torch.nn.ModuleList(ip_adapter_processors(unet).values())}
    ).requires_grad_(True)
    drop_prob = recipe.extra.get("drop_prob", 0.05)
    # Captions that name the style make the image prompt redundant: the adapter then learns to add nothing.
    style_caption_prob = recipe.extra.get("style_caption_prob", 1.0)

    def step_fn(step):
        batch = space.recipe_batch(recipe.extra, recipe.batch_size, recipe.seed, step, renderer.SEEN_STYLES)
        images, captions = batch.images, batch.captions
        generator = step_generator(recipe.seed, step)
        noisy, timesteps, target = parts.noised(images, generator)
        if style_caption_prob < 1.0:
            captions = without_style(captions, torch.rand(len(images), generator=generator) < style_caption_prob)
        with torch.no_grad():
            image_embeds = image_encoder(pixel_values=to_tensor(images) * 2 - 1).image_embeds  # [n, D]
        # The official script's dropout: one draw per sample; image only, text only, both (5 % each by default).
        draw = torch.rand(len(images), generator=generator)
        drop_image = (draw < drop_prob) | ((draw >= 2 * drop_prob) & (draw < 3 * drop_prob))
        drop_text = (draw >= drop_prob) & (draw < 3 * drop_prob)
        image_embeds = torch.where(drop_image[:, None], 0.0, image_embeds)  # zeros: the unconditional image
        text = parts.encode_text(drop_captions(captions, drop_text))
        added = {"image_embeds": [image_embeds[:, None]]}  # one adapter, one image each: [n, 1, D]
        prediction = unet(noisy, timesteps, text, added_cond_kwargs=added).sample.float()
        return F.mse_loss(prediction, target), {}

    wall, history = train_loop(recipe, out, {"ip_adapter": trained}, list(trained.parameters()), step_fn, resume)
    folder = out / "ip-adapter"
    image_encoder.save_pretrained(folder / "image_encoder")
    CLIPImageProcessor.from_pretrained(clip, local_files_only=True).save_pretrained(folder / "image_encoder")
    save_file(ip_adapter_state_dict(unet), folder / IP_ADAPTER_WEIGHTS)
    pipe = load_shapes_sd(sd_folder)  # the saved adapter, through diffusers' own loader
    pipe.load_ip_adapter(str(out), subfolder="ip-adapter", weight_name=IP_ADAPTER_WEIGHTS)
    if space.on_space(recipe.extra):
        metrics = evaluate_ip_adapter_space(pipe, evaluation_oracles(oracles), recipe.extra.get("eval", {}))
    else:
        metrics = evaluate_ip_adapter(pipe, evaluation_oracles(oracles), recipe.extra.get("eval", {}))
    finish(out, "ip-adapter", recipe, wall, history, metrics)


def evaluate_ip_adapter_space(pipe, oracles: Oracles, settings: dict) -> dict:
    """The plain IP-Adapter (every block, scale 1) on each held-out family of the style space: its reference image
    (``space_eval.family_task``: a large red circle) and ``settings["images"]`` prompts of other shapes and colours
    with no style words; style match, content and leakage (``space_eval.measure_family``) per family, and the mean."""
    from .space_eval import family_task, measure_family

    result = {"sampler": {"images": 16, "steps": 25, "guidance": 3.0, **settings}}
    for name in space.HELD_OUT_FAMILIES:
        task = family_task(name, settings.get("images", 16))
        images, _ = sample(
            pipe, task.prompts(with_style=False), settings, ip_adapter_image=Image.fromarray(task.reference)
        )
        result[name] = measure_family(images, task, oracles)
    keys = result[next(iter(space.HELD_OUT_FAMILIES))].keys()
    result["mean"] = {k: round(float(np.mean([result[f][k] for f in space.HELD_OUT_FAMILIES])), 4) for k in keys}
    return result


def evaluate_ip_adapter(pipe, oracles: Oracles, settings: dict) -> dict:
    """The plain IP-Adapter (every block, scale 1) on each held-out family: its reference image (``make_task``:
    a large red circle) and ``settings["images"]`` prompts of other shapes and colours with no style words. Oracle
    style, content and leakage (``evaluation.measure``) per family and their mean."""
    from ..evaluation import make_task, measure

    result = {"sampler": {"images": 16, "steps": 25, "guidance": 3.0, **settings}}
    keys = ("style_accuracy", "content_accuracy", "leakage")
    for style in renderer.HELD_OUT_STYLES:
        task = make_task(style, num_prompts=settings.get("images", 16))
        prompts = [prompt.replace(f" in {style} style", "") for prompt in task.prompts]
        images, _ = sample(pipe, prompts, settings, ip_adapter_image=task.reference)
        pixels = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        metrics = measure([Image.fromarray(p) for p in pixels], task.prompts, task, oracles)
        result[style] = {key: round(metrics[key], 4) for key in keys}
    result["mean"] = {key: round(float(np.mean([result[s][key] for s in renderer.HELD_OUT_STYLES])), 4) for key in keys}
    return result


def train_controlnet(recipe: Recipe, out: Path, resume: bool, sd_folder: Path, oracles: Path) -> None:
    """Canny-edge conditioning on seen-style renders, the base UNet frozen, the caption dropped with
    ``extra.empty_prompt_prob`` (the ControlNet paper drops half of them, so the edges alone must carry the layout)."""
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    pipe = load_shapes_sd(sd_folder)
    parts, unet = LatentDiffusion.from_pipeline(pipe), pipe.unet
    levels = len(parts.vae.config.block_out_channels)  # the edge encoder must shrink 64 px to the latents' size
    channels = recipe.model.get("conditioning_embedding_out_channels", [16, 32, 96, 256][:levels])
    if len(channels) != levels:
        raise StylecraftError(
            f"model.conditioning_embedding_out_channels needs {levels} entries (one per VAE level, to reach the "
            f"latents' {renderer.SIZE // 2 ** (levels - 1)}×{renderer.SIZE // 2 ** (levels - 1)}), got {channels}"
        )
    torch.manual_seed(recipe.seed)
    if "init" in recipe.extra:  # continue an earlier run's ControlNet (its run folder) on a UNet trained further
        earlier = Path(recipe.extra["init"]) / "controlnet"
        if not (earlier / "config.json").is_file():
            raise StylecraftError(f"extra.init: no ControlNet in {earlier}; name a controlnet run's output folder")
        controlnet = ControlNetModel.from_pretrained(earlier, local_files_only=True)
    else:
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(channels))
    empty_prompt_prob = recipe.extra.get("empty_prompt_prob", 0.5)

    def step_fn(step):
        batch = space.recipe_batch(recipe.extra, recipe.batch_size, recipe.seed, step, renderer.SEEN_STYLES)
        images, captions = batch.images, batch.captions
        generator = step_generator(recipe.seed, step)
        noisy, timesteps, target = parts.noised(images, generator)
        edges = to_tensor(np.stack([np.asarray(canny_edges(Image.fromarray(image))) for image in images]))  # [0, 1]
        drop = torch.rand(len(images), generator=generator) < empty_prompt_prob
        text = parts.encode_text(drop_captions(captions, drop))
        down, mid = controlnet(noisy, timesteps, text, controlnet_cond=edges, return_dict=False)
        prediction = unet(
            noisy, timesteps, text, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample.float()
        return F.mse_loss(prediction, target), {}

    wall, history = train_loop(recipe, out, {"controlnet": controlnet}, list(controlnet.parameters()), step_fn, resume)
    controlnet.save_pretrained(out / "controlnet")
    controlnet = ControlNetModel.from_pretrained(out / "controlnet", local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pipe(load_shapes_sd(sd_folder), controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    metrics = evaluate_controlnet(pipe, evaluation_oracles(oracles), recipe.extra.get("eval", {}))
    finish(out, "controlnet", recipe, wall, history, metrics)


def evaluate_controlnet(pipe, oracles: Oracles, settings: dict) -> dict:
    """Fresh renders of seen styles as content images (their canny edges). With the empty prompt only the edges can
    give the shape: the share of samples whose shape, size and position the oracles read as the render's. With the
    render's caption: oracle accuracy of every attribute."""
    images, scenes = renderer.render_batch(settings.get("images", 32), EVAL_SEED, renderer.SEEN_STYLES)
    edges = [canny_edges(Image.fromarray(image)) for image in images]
    result = {"sampler": {"images": 32, "steps": 25, "guidance": 3.0, **settings}}
    for name, prompts in (("edges_only", [""] * len(images)), ("edges_and_caption", scenes.captions())):
        samples, _ = sample(pipe, prompts, settings, images=edges)
        accuracy = oracle_accuracy(oracles, samples, scenes.labels())
        kept = ("shape", "size", "position") if name == "edges_only" else accuracy
        result[name] = {key: round(accuracy[key], 4) for key in kept}
    return result
