"""InstantStyle (Wang et al. 2024, arXiv 2404.02733): tuning-free style transfer with an IP-Adapter.

A plain IP-Adapter adds the style image's CLIP tokens to every cross-attention layer of the UNet, so the picture
copies the reference's content and layout along with its style. InstantStyle makes two changes:

1. **Style blocks only.** The image tokens go only into the attention blocks that carry style (SDXL:
   ``up_blocks.0.attentions.1``; with layout also ``down_blocks.2.attentions.1``). Every other IP-Adapter processor
   gets scale 0, which diffusers' ``IPAdapterAttnProcessor2_0`` skips entirely.
2. **Content subtraction.** The positive image embedding becomes ``image_embeds - s * text_embeds(content prompt)``
   in the image encoder's own CLIP space; the negative (unconditional) branch stays zeros as for any basic adapter.

A content image keeps its layout through a canny ControlNet while the style goes in the style blocks.

Beyond the paper:

- **Precise style transfer** (``precise=True``, ComfyUI IPAdapter's "style transfer precise"): the layout blocks (in
  "style+layout" but not in "style") also get the adapter, with the reference as the *negative*: their processors see
  the CFG batch's image tokens swapped, so guidance pushes away from the reference's layout there.
- **Several style images**: their embeddings are averaged (optionally weighted) into one; ``--style-embeds`` reuses it.
- **A model folder may declare its defaults** in model_index.json's ``"_stylecraft"`` entry (diffusers ignores keys
  starting with ``_``): an ``architecture`` name and ``block_presets`` for it, and the ``ip_adapter``,
  ``ip_adapter_weight``, ``controlnet`` and ``content_text_encoder`` it ships with (folders relative to the model's).

Everything runs on diffusers' ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (and their ControlNet
variants) with ``load_ip_adapter``; this module chooses the processors, builds ``ip_adapter_image_embeds`` and
writes the output folder.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import StylecraftError
from .io import load_image, make_grid, output_dir, save_png, write_json

# Named block sets per architecture (InstantStyle paper and official repo). "all" = every IP-Adapter processor.
BLOCK_PRESETS: dict[str, dict[str, list[str]]] = {
    "sdxl": {
        "style": ["up_blocks.0.attentions.1"],
        "style+layout": ["up_blocks.0.attentions.1", "down_blocks.2.attentions.1"],
    },
    # SD 1.5 has no single style attention; these are the official repo's experimental choice.
    "sd15": {
        "style": ["up_blocks.1"],
        "style+layout": ["down_blocks.2", "mid_block", "up_blocks.1"],
    },
}
# The shapes world's SD 1.5-layout model (its IP-Adapter, ControlNet and text tower inside, declared in its
# model_index.json): stylecraft.world.WEIGHTS / "shapes-sd", spelled out so this module does not import the world.
DEFAULT_MODEL = Path(__file__).parent / "world" / "weights" / "shapes-sd"
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
DEFAULT_WEIGHT_NAME = {"sdxl": "sdxl_models/ip-adapter_sdxl.safetensors", "sd15": "models/ip-adapter_sd15.safetensors"}
DEFAULT_CONTROLNET = {"sdxl": "diffusers/controlnet-canny-sdxl-1.0", "sd15": "lllyasviel/sd-controlnet-canny"}
# Default subtraction strength: 0.5 with SDXL's own bigG text tower (paper), 0.8 with a separate ViT-H text tower.
DEFAULT_SUBTRACT = {"text_encoder_2": 0.5, "content_text_encoder": 0.8}
VIT_H_TEXT = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


# ----------------------------------------------------------------------------------------------- blocks


def architecture_of(unet) -> str:
    """Return "sdxl" for an SDXL-layout UNet (time-and-text added conditioning), else "sd15"."""
    return "sdxl" if unet.config.addition_embed_type == "text_time" else "sd15"


def ip_adapter_processors(unet) -> dict[str, Any]:
    """The UNet's IP-Adapter attention processors by name (empty before ``load_ip_adapter``)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    processors = unet.attn_processors.items()
    return {name: p for name, p in processors if isinstance(p, IPAdapterAttnProcessor | IPAdapterAttnProcessor2_0)}


def processors_under(unet, block_keys: list[str]) -> dict[str, Any]:
    """The IP-Adapter processors inside the blocks ``block_keys`` (e.g. ``up_blocks.0.attentions.1``), by name."""
    processors = ip_adapter_processors(unet).items()
    return {name: p for name, p in processors if any(name.startswith(f"{key}.") for key in block_keys)}


def valid_block_keys(unet) -> list[str]:
    """Keys ``--blocks`` accepts for this UNet: whole blocks (``up_blocks.0``) and attentions (``…attentions.1``)."""
    keys = set()
    for name in ip_adapter_processors(unet):
        parts = name.split(".")  # e.g. up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor
        block = parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])
        keys.update([block, f"{block}.attentions.{parts[parts.index('attentions') + 1]}"])
    return sorted(keys)


def resolve_blocks(unet, blocks: str | list[str], presets: dict[str, list[str]] | None = None) -> list[str]:
    """Turn a preset name ("style", "style+layout", "all"), a comma-separated string or a list into block keys.

    ``presets`` defaults to ``BLOCK_PRESETS[architecture_of(unet)]``. Every key must exist in this UNet: diffusers'
    ``set_ip_adapter_scale`` drops unknown keys silently, which leaves the adapter off everywhere.
    """
    valid = valid_block_keys(unet)
    if not valid:
        raise StylecraftError("the UNet has no IP-Adapter processors; load an IP-Adapter before choosing blocks")
    presets = BLOCK_PRESETS[architecture_of(unet)] if presets is None else presets
    if isinstance(blocks, str):
        if blocks == "all":
            return [key for key in valid if "attentions" not in key]
        keys = presets[blocks] if blocks in presets else [key.strip() for key in blocks.split(",") if key.strip()]
    else:
        keys = list(blocks)
    unknown = [key for key in keys if key not in valid]
    for key in unknown:  # a real block of the UNet (e.g. SDXL's down_blocks.0, a DownBlock2D) without cross-attention
        try:
            module = unet.get_submodule(key)
        except AttributeError:
            continue
        if not processors_under(unet, [key]):
            raise StylecraftError(
                f"block {key} ({type(module).__name__}) has no cross-attention, so the IP-Adapter cannot reach it; "
                f"use blocks that have: {', '.join(valid)}"
            )
    if unknown or not keys:
        raise StylecraftError(
            f"unknown block key(s) {', '.join(unknown) or '(none given)'} for this UNet; "
            f"use a preset ({', '.join([*presets, 'all'])}) or comma-separated keys from: {', '.join(valid)}"
        )
    return keys


def layout_keys(presets: dict[str, list[str]]) -> list[str]:
    """The layout blocks of a preset table: those in "style+layout" that are not in "style" (SDXL:
    ``down_blocks.2.attentions.1``; SD 1.5: ``down_blocks.2``, ``mid_block``)."""
    return [key for key in presets.get("style+layout", []) if key not in presets.get("style", [])]


def set_ip_adapter_blocks(unet, block_keys: list[str], scale: float = 1.0) -> list[str]:
    """Give the IP-Adapter ``scale`` in the processors under ``block_keys`` and 0 (skipped) in all others.

    Same effect as ``pipe.set_ip_adapter_scale({"up": {"block_0": [0.0, scale, 0.0]}})`` for the SDXL style block,
    with the keys checked. Returns the names of the processors that stay on.
    """
    active = processors_under(unet, block_keys)
    for name, processor in ip_adapter_processors(unet).items():
        processor.scale = [scale if name in active else 0.0] * len(processor.scale)  # one entry per loaded adapter
    return list(active)


class ReferenceAsNegative(torch.nn.Module):
    """An IP-Adapter processor that sees the CFG batch's image tokens swapped (precise style transfer).

    diffusers stacks the batch as [unconditional; conditional] (``prepare_ip_adapter_image_embeds``). Swapped, the
    conditional half attends to the unconditional image tokens and the unconditional half to the reference's, so
    ``uncond + g · (cond − uncond)`` pushes away from the reference in this block (ComfyUI IPAdapter's "style transfer
    precise" gives the layout block the reference as its negative the same way).
    """

    def __init__(self, processor: torch.nn.Module):
        super().__init__()
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kwargs):  # attention_mask etc. in kwargs
        text, image_tokens = encoder_hidden_states  # image tokens: one [2·n, ...] tensor per adapter
        swapped = [torch.cat(tokens.chunk(2)[::-1]) for tokens in image_tokens]
        return self.processor(attn, hidden_states, (text, swapped), **kwargs)


@contextmanager
def reference_as_negative(unet, block_keys: list[str]) -> Iterator[None]:
    """Within the block: the IP-Adapter processors under ``block_keys`` take the reference as their negative."""
    swapped = []  # (attention module, its own processor)
    try:
        for name, processor in processors_under(unet, block_keys).items():
            attention = unet.get_submodule(name.removesuffix(".processor"))
            attention.set_processor(ReferenceAsNegative(processor))
            swapped.append((attention, processor))
        yield
    finally:
        for attention, processor in swapped:
            attention.set_processor(processor)


# ----------------------------------------------------------------------------------------------- content path


def subtract_content(image_embeds: torch.Tensor, content_embeds: torch.Tensor, strength: float) -> torch.Tensor:
    """InstantStyle content subtraction in the image encoder's CLIP space: ``image − strength · content``."""
    if image_embeds.shape[-1] != content_embeds.shape[-1]:
        raise StylecraftError(
            f"image embedding has {image_embeds.shape[-1]} dims but the content text embedding has "
            f"{content_embeds.shape[-1]}; use the text tower of the IP-Adapter's own image encoder "
            f"(--content-text-encoder, e.g. {VIT_H_TEXT} for ViT-H adapters)"
        )
    return image_embeds - strength * content_embeds  # [1, D]


def canny_edges(image: Image.Image, low: float = 100.0, high: float = 200.0) -> Image.Image:
    """Canny edge map as an RGB image, following OpenCV's ``cv2.Canny(gray, low, high)`` (no OpenCV needed).

    Steps as in Canny (1986) and OpenCV: 3×3 Sobel gradients with the L1 magnitude ``|gx| + |gy|`` (OpenCV's
    default; no pre-blur), non-maximum suppression along the gradient direction, then hysteresis: pixels above
    ``high`` are edges, pixels above ``low`` are edges when connected to one.
    """
    gray = np.asarray(image.convert("L"), dtype=np.float32)  # [H, W]
    height, width = gray.shape

    def shifted(array: np.ndarray, dy: int, dx: int, mode: str) -> np.ndarray:
        padded = np.pad(array, 1, mode=mode)
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    def px(dy: int, dx: int) -> np.ndarray:
        return shifted(gray, dy, dx, "reflect")  # OpenCV's default border, BORDER_REFLECT_101

    gx = px(-1, 1) + 2 * px(0, 1) + px(1, 1) - px(-1, -1) - 2 * px(0, -1) - px(1, -1)
    gy = px(1, -1) + 2 * px(1, 0) + px(1, 1) - px(-1, -1) - 2 * px(-1, 0) - px(-1, 1)
    magnitude = np.abs(gx) + np.abs(gy)

    # Non-maximum suppression: keep a pixel only if it is a maximum along its gradient direction (y points down).
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180
    neighbours = {  # direction bin -> the two neighbours along the gradient
        0: ((0, 1), (0, -1)),
        45: ((1, 1), (-1, -1)),
        90: ((1, 0), (-1, 0)),
        135: ((1, -1), (-1, 1)),
    }
    direction = (np.round(angle / 45) % 4 * 45).astype(int)
    is_max = np.zeros_like(magnitude, dtype=bool)
    for bin_angle, (first, second) in neighbours.items():
        peak = (magnitude >= shifted(magnitude, *first, "constant")) & (
            magnitude > shifted(magnitude, *second, "constant")
        )
        is_max |= (direction == bin_angle) & peak
    thin = np.where(is_max, magnitude, 0.0)

    # Hysteresis: grow the strong edges through weak ones (8-connected) until nothing changes.
    candidates = thin > low
    edges = thin > high
    while True:
        grown = edges.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= shifted(edges, dy, dx, "constant")
        grown &= candidates
        if (grown == edges).all():
            break
        edges = grown
    return Image.fromarray(np.where(edges, 255, 0).astype(np.uint8)).convert("RGB")


# ----------------------------------------------------------------------------------------------- pipeline


def normalised_weights(count: int, weights: list[float] | None) -> list[float]:
    """Weights of ``count`` style images, summing to 1 (default equal); one per image, non-negative, not all 0."""
    weights = [1.0] * count if weights is None else list(weights)
    if count < 1 or len(weights) != count:
        raise StylecraftError(
            f"got {count} style image(s) and {len(weights)} weight(s); give one weight per image "
            "(--style-weights W [W ...]) or none for equal weights"
        )
    if any(weight < 0 for weight in weights) or sum(weights) <= 0:
        raise StylecraftError(f"style weights must be non-negative and not all zero, got {weights}")
    return [weight / sum(weights) for weight in weights]


@dataclass
class InstantStyleOutput:
    """Generated images plus the settings they were made with (as resolved: defaults filled in)."""

    images: list[Image.Image]
    settings: dict[str, Any]
    image_embeds: torch.Tensor  # [1, D] style image embedding before subtraction (reusable as style_embeds)
    control_image: Image.Image | None = None  # the canny edge map, when a content image was given


@dataclass
class InstantStyle:
    """A Stable Diffusion 1.5 / XL pipeline with an IP-Adapter loaded, plus what content subtraction needs.

    Build it with ``load_instantstyle``; call it like a diffusers pipeline.
    """

    pipe: Any  # StableDiffusion(XL)(ControlNet)Pipeline with the IP-Adapter loaded
    sources: dict[str, str | None] = field(default_factory=dict)  # where each component came from (run.json)
    content_text_encoder: Any = None  # CLIPTextModelWithProjection matching the image encoder (ViT-H adapters)
    content_tokenizer: Any = None
    architecture: str = ""  # the BLOCK_PRESETS key: the model folder's declared name, else architecture_of(unet)
    block_presets: dict[str, list[str]] = field(default_factory=dict)  # the folder's own, over BLOCK_PRESETS's

    def __post_init__(self):
        self.architecture = self.architecture or architecture_of(self.pipe.unet)
        self.block_presets = {**BLOCK_PRESETS.get(self.architecture, {}), **self.block_presets}

    @property
    def image_projection(self):
        return self.pipe.unet.encoder_hid_proj.image_projection_layers[0]

    @property
    def basic_adapter(self) -> bool:
        """True when the adapter projects one pooled CLIP embedding (not Plus/Full patch tokens)."""
        from diffusers.models.embeddings import ImageProjection

        return isinstance(self.image_projection, ImageProjection)

    def encode_style(self, image: Image.Image | str | Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The adapter's image-encoder input for the style image and its unconditional counterpart.

        Basic adapters: the pooled CLIP image embedding [1, D] and zeros. Plus/Full adapters: the encoder's patch
        tokens [1, T, W] and those of a black image (diffusers' ``encode_image``).
        """
        if isinstance(image, str | Path):
            image = load_image(image)
        if not isinstance(image, Image.Image):
            raise StylecraftError(
                f"style image must be a PIL image or an image file path, not {type(image).__name__}; "
                "pass --style-image PATH (PNG/JPEG)"
            )
        if self.pipe.image_encoder is None:
            raise StylecraftError("no image encoder is loaded; pass --image-encoder FOLDER or use --style-embeds")
        with torch.no_grad():
            return self.pipe.encode_image(image, self.pipe.device, 1, output_hidden_states=not self.basic_adapter)

    def encode_styles(
        self, images: list[Image.Image | str | Path], weights: list[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_style`` of several images, combined as their weighted mean (weights default equal)."""
        weights = normalised_weights(len(images), weights)
        encoded = [self.encode_style(image) for image in images]
        mean = sum(weight * embeds for weight, (embeds, _) in zip(weights, encoded, strict=True))
        return mean, encoded[0][1]  # [1, D] or [1, T, W]; the unconditional input does not depend on the image

    def encode_content(self, prompt: str) -> torch.Tensor:
        """Projected (pooled) CLIP text embedding of the content prompt in the image encoder's space: [1, D]."""
        encoder, tokenizer = self.content_text_encoder, self.content_tokenizer
        if encoder is None:
            if architecture_of(self.pipe.unet) != "sdxl":
                raise StylecraftError(
                    "SD 1.5 IP-Adapters use a ViT-H image encoder and the pipeline has no ViT-H text tower; "
                    f"pass --content-text-encoder {VIT_H_TEXT} (or a local copy)"
                )
            # SDXL's text_encoder_2 is OpenCLIP bigG, the text tower of ip-adapter_sdxl's image encoder.
            encoder, tokenizer = self.pipe.text_encoder_2, self.pipe.tokenizer_2
        tokens = tokenizer(
            prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            return encoder(tokens.input_ids.to(encoder.device)).text_embeds  # [1, D]

    def __call__(
        self,
        prompt: str,
        style_image: Image.Image | str | Path | list[Image.Image | str | Path] | None = None,
        *,
        style_weights: list[float] | None = None,
        style_embeds: torch.Tensor | None = None,
        negative_prompt: str | None = None,
        blocks: str | list[str] = "style",
        scale: float = 1.0,
        precise: bool = False,
        content_prompt: str | None = None,
        subtract: float | None = None,
        content_image: Image.Image | str | Path | None = None,
        controlnet_scale: float = 0.6,
        steps: int = 30,
        guidance: float = 5.0,
        num_images: int = 1,
        seed: int = 0,
    ) -> InstantStyleOutput:
        """Generate ``num_images`` images of ``prompt`` in the style of ``style_image`` (or ``style_embeds``).

        ``style_image``: one image or a list; several are combined as the mean of their embeddings, weighted by
        ``style_weights`` (default equal).
        ``blocks``: a preset ("style", "style+layout", "all"), comma-separated block keys, or a list of keys.
        ``precise``: the layout blocks also get the adapter (at ``scale``), with the reference as their negative.
        ``content_prompt``/``subtract``: remove the style image's content, ``image − subtract · text(content)``
        (default strength 0.5 with SDXL's bigG text tower, 0.8 with ``content_text_encoder``).
        ``content_image``: keep its layout through the canny ControlNet (needs ``load_instantstyle(controlnet=…)``).
        ``seed`` seeds ``torch.Generator("cpu")``, so images match across devices and diffusers' own calls.
        """
        # 1. Validate.
        if (style_image is None) == (style_embeds is None):
            raise StylecraftError("give exactly one of a style image (--style-image) or an embedding (--style-embeds)")
        if style_weights is not None and style_image is None:
            raise StylecraftError("--style-weights weighs style images; drop it with --style-embeds")
        if subtract is not None and content_prompt is None:
            raise StylecraftError("--subtract needs --content-prompt (the content to remove from the style image)")
        if content_image is not None and not hasattr(self.pipe, "controlnet"):
            raise StylecraftError("a content image needs a ControlNet; load with --controlnet (a canny ControlNet)")
        if content_image is None and hasattr(self.pipe, "controlnet"):
            raise StylecraftError("this pipeline has a ControlNet; pass a content image (--content-image)")
        for name, value in (("steps", steps), ("num_images", num_images)):
            if value < 1:
                raise StylecraftError(f"{name} must be at least 1, got {value}")

        do_cfg = guidance > 1 and self.pipe.unet.config.time_cond_proj_dim is None

        # 2. Style blocks: IP-Adapter on only where the style lives (and, precise, in the layout blocks as negative).
        block_keys = resolve_blocks(self.pipe.unet, blocks, self.block_presets)
        negative_keys = []
        if precise:
            if not do_cfg:
                raise StylecraftError(
                    "--precise gives the layout blocks the reference as the negative, which needs classifier-free "
                    f"guidance; use --guidance above 1 (got {guidance})"
                )
            if not layout_keys(self.block_presets):
                raise StylecraftError(
                    f"--precise needs the layout blocks of this {self.architecture} model, and its presets name none "
                    '(a "style+layout" preset with blocks beyond "style")'
                )
            negative_keys = resolve_blocks(self.pipe.unet, layout_keys(self.block_presets), self.block_presets)
            if (
                processors_under(self.pipe.unet, block_keys).keys()
                & processors_under(self.pipe.unet, negative_keys).keys()
            ):
                raise StylecraftError(
                    f"--precise takes the layout block(s) {', '.join(negative_keys)} as negative, but --blocks "
                    f"{', '.join(block_keys)} puts the reference there as positive; use --blocks style"
                )
        active = set_ip_adapter_blocks(self.pipe.unet, block_keys + negative_keys, scale)

        # 3. Image embedding, minus the content; the negative branch is the adapter's unconditional input (zeros).
        if style_embeds is not None:
            if not self.basic_adapter:
                raise StylecraftError("a precomputed embedding needs a basic IP-Adapter (its input is one vector)")
            style_embeds = torch.as_tensor(style_embeds)
            expected = self.image_projection.image_embeds.in_features
            if style_embeds.numel() != expected:
                raise StylecraftError(
                    f"style embedding has shape {tuple(style_embeds.shape)} but this IP-Adapter expects {expected} "
                    "values; compute it with the adapter's own image encoder"
                )
            image_embeds = style_embeds.reshape(1, expected)  # [1, D]
            negative = torch.zeros_like(image_embeds)
        else:
            images = list(style_image) if isinstance(style_image, list | tuple) else [style_image]
            image_embeds, negative = self.encode_styles(images, style_weights)
        dtype, device = self.pipe.unet.dtype, self.pipe.unet.device
        image_embeds, negative = image_embeds.to(device, dtype), negative.to(device, dtype)
        positive = image_embeds
        if content_prompt is not None:
            if not self.basic_adapter:
                raise StylecraftError(
                    f"content subtraction needs an IP-Adapter that reads the pooled CLIP embedding; this one "
                    f"({type(self.image_projection).__name__}: a Plus/Full adapter) reads patch tokens. Use e.g. "
                    "ip-adapter_sdxl.safetensors, or drop --content-prompt"
                )
            if subtract is None:
                subtract = DEFAULT_SUBTRACT["content_text_encoder" if self.content_text_encoder else "text_encoder_2"]
            content_embeds = self.encode_content(content_prompt).to(device, dtype)
            positive = subtract_content(image_embeds, content_embeds, subtract)
        # diffusers' precomputed layout per adapter: [negative; positive] with CFG, else positive: [(2,) 1, ...]
        ip_adapter_image_embeds = torch.stack([negative, positive]) if do_cfg else positive[None]

        # 4. Generate.
        kwargs: dict[str, Any] = {}
        control_image = None
        if content_image is not None:
            if isinstance(content_image, str | Path):  # centre-crop to the model's square resolution
                content_image = load_image(
                    content_image, size=self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
                )
            control_image = canny_edges(content_image)
            kwargs = {"image": control_image, "controlnet_conditioning_scale": controlnet_scale}
        with reference_as_negative(self.pipe.unet, negative_keys):
            images = self.pipe(
                prompt=prompt,
                negative_prompt=negative_prompt,
                ip_adapter_image_embeds=[ip_adapter_image_embeds],
                num_inference_steps=steps,
                guidance_scale=guidance,
                num_images_per_prompt=num_images,
                generator=torch.Generator("cpu").manual_seed(seed),
                **kwargs,
            ).images
        settings = {
            **self.sources,
            "architecture": self.architecture,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "blocks": blocks if isinstance(blocks, str) else ",".join(blocks),
            "block_keys": block_keys,
            "active_processors": len(active),
            "ip_adapter_processors": len(ip_adapter_processors(self.pipe.unet)),
            "scale": scale,
            "precise": precise,
            "layout_keys": negative_keys or None,
            "style_weights": style_weights,
            "content_prompt": content_prompt,
            "subtract": subtract,
            "controlnet_scale": controlnet_scale if content_image is not None else None,
            "steps": steps,
            "guidance": guidance,
            "num_images": num_images,
            "seed": seed,
            "size": list(images[0].size),
        }
        return InstantStyleOutput(images, settings, image_embeds.detach().float().cpu(), control_image)


def _pretrained(loader, source: str, what: str, flag: str, **kwargs):
    """``loader.from_pretrained`` with a local folder or hub id; any failure is one StylecraftError line."""
    local = Path(source).expanduser().is_dir()
    try:
        return loader.from_pretrained(
            str(Path(source).expanduser()) if local else source, local_files_only=local, **kwargs
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise StylecraftError(f"could not load {what} {source!r} ({first}); pass a local folder with {flag}") from None


def model_declaration(model: str | Path) -> dict[str, Any]:
    """The ``"_stylecraft"`` entry of a local model folder's model_index.json: what InstantStyle uses it with.

    Keys (all optional): ``architecture`` (its BLOCK_PRESETS name), ``block_presets`` (``{"style": [...],
    "style+layout": [...]}``), ``ip_adapter``, ``controlnet``, ``content_text_encoder`` (folders relative to the
    model's) and ``ip_adapter_weight`` (the file inside ``ip_adapter``). Hub ids and other folders declare nothing.
    """
    index = Path(model).expanduser() / "model_index.json"
    if not index.is_file():
        return {}
    try:
        declared = json.loads(index.read_text()).get("_stylecraft", {})
    except (OSError, ValueError, AttributeError) as err:
        raise StylecraftError(f"could not read {index} ({err.__class__.__name__}); fix or replace the file") from None
    presets = declared.get("block_presets", {}) if isinstance(declared, dict) else None
    if not isinstance(presets, dict) or not all(
        isinstance(keys, list) and all(isinstance(key, str) for key in keys) for keys in presets.values()
    ):
        raise StylecraftError(
            f'{index}: "_stylecraft" must be an object whose "block_presets" maps preset names to lists of block '
            'keys, e.g. {"style": ["up_blocks.1"]}'
        )
    return declared


def load_instantstyle(
    model: str | Path | None = None,
    ip_adapter: str | Path | dict | None = None,
    weight_name: str | None = None,
    image_encoder: str | Path | None = None,
    controlnet: str | Path | None = None,
    content_text_encoder: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InstantStyle:
    """Load an SD 1.5 / SDXL pipeline with an IP-Adapter (and a ControlNet) for InstantStyle.

    A model folder's declared defaults (``model_declaration``) fill in what is not given; explicit arguments win.

    Args:
        model: hub id (e.g. ``stabilityai/stable-diffusion-xl-base-1.0``) or diffusers-layout folder; default
            ``DEFAULT_MODEL``, the shapes world's ``shapes-sd``.
        ip_adapter: repo id or folder holding the adapter weights (or a state dict, as diffusers accepts); default
            the model folder's declared adapter, else ``h94/IP-Adapter``.
        weight_name: path of the weights inside ``ip_adapter`` (default: the declared one with the declared adapter,
            else ``sdxl_models/ip-adapter_sdxl.safetensors`` for SDXL, ``models/ip-adapter_sd15.safetensors`` for
            SD 1.5).
        image_encoder: CLIP vision folder, or a subfolder of ``ip_adapter``; default ``image_encoder`` next to the
            weights (diffusers' rule). Not loaded when the model folder already has one.
        controlnet: canny ControlNet (repo id or folder) for content images; ``"default"`` picks the declared one,
            else ``diffusers/controlnet-canny-sdxl-1.0`` or ``lllyasviel/sd-controlnet-canny``.
        content_text_encoder: CLIP text model with projection matching the image encoder, for content subtraction
            with ViT-H adapters (SD 1.5, ``ip-adapter_sdxl_vit-h``); SDXL's bigG adapters use ``text_encoder_2``.
            Default: the declared one, if any.
        device, dtype: where and in what precision to run (float32 on CPU; float16 on GPU is the usual choice).
    """
    from diffusers import (
        ControlNetModel,
        DiffusionPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
    from transformers import AutoConfig, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    if model is None:
        if not DEFAULT_MODEL.is_dir():
            raise StylecraftError(
                f"the built-in shapes-sd model is not installed ({DEFAULT_MODEL} is missing); pass --model with an "
                "SD 1.5 / SDXL hub id or folder"
            )
        model = DEFAULT_MODEL
    declared = model_declaration(model)
    folder = Path(model).expanduser()  # declared paths are relative to it
    if ip_adapter is None:
        ip_adapter = folder / declared["ip_adapter"] if "ip_adapter" in declared else DEFAULT_IP_ADAPTER
        weight_name = weight_name or declared.get("ip_adapter_weight")
    if content_text_encoder is None and "content_text_encoder" in declared:
        content_text_encoder = folder / declared["content_text_encoder"]

    pipe = _pretrained(DiffusionPipeline, str(model), "model", "--model", dtype=dtype)
    controlnet_pipelines = {  # text-to-image class -> its ControlNet variant
        StableDiffusionXLPipeline: StableDiffusionXLControlNetPipeline,
        StableDiffusionPipeline: StableDiffusionControlNetPipeline,
    }
    if type(pipe) not in controlnet_pipelines:
        raise StylecraftError(
            f"{model} is a {type(pipe).__name__}; InstantStyle needs a Stable Diffusion 1.5 or XL text-to-image model"
        )
    architecture = architecture_of(pipe.unet)

    # IP-Adapter: diffusers' loader, with the image encoder from an explicit folder when one is given.
    weight_name = weight_name or DEFAULT_WEIGHT_NAME[architecture]
    subfolder, _, file_name = weight_name.rpartition("/")
    if image_encoder is not None and getattr(pipe, "image_encoder", None) is None:
        if Path(image_encoder).expanduser().is_dir():
            encoder = _pretrained(CLIPVisionModelWithProjection, str(image_encoder), "image encoder", "--image-encoder")
        else:
            encoder = _pretrained(
                CLIPVisionModelWithProjection,
                str(ip_adapter),
                "image encoder",
                "--image-encoder",
                subfolder=image_encoder,
            )
        pipe.register_modules(image_encoder=encoder.to(dtype=dtype))
    local = isinstance(ip_adapter, str | Path) and Path(ip_adapter).expanduser().is_dir()
    try:
        pipe.load_ip_adapter(
            str(Path(ip_adapter).expanduser()) if local else ip_adapter,
            subfolder=subfolder,
            weight_name=file_name,
            image_encoder_folder=None if isinstance(ip_adapter, dict) else "image_encoder",
            local_files_only=local,
        )
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise StylecraftError(
            f"could not load IP-Adapter {weight_name} ({first}); pass --ip-adapter REPO_OR_FOLDER and "
            "--ip-adapter-weight SUBFOLDER/FILE.safetensors"
        ) from None
    # The image encoder must give what the adapter's projection takes: the pooled embedding (basic adapters) or the
    # patch tokens (Plus); otherwise generation would stop at a matrix-shape error.
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    encoder = getattr(pipe, "image_encoder", None)
    given = taken = None  # the encoder's output width, the projection's input width
    if encoder is not None and isinstance(projection, ImageProjection):
        given, taken = encoder.config.projection_dim, projection.image_embeds.in_features
    elif encoder is not None and isinstance(projection, IPAdapterPlusImageProjection):
        given, taken = encoder.config.hidden_size, projection.proj_in.in_features
    if given != taken:
        raise StylecraftError(
            f"the image encoder gives {given}-dim image embeddings but the IP-Adapter's image projection takes "
            f"{taken}; pass the adapter's own image encoder (--image-encoder)"
        )

    if controlnet is not None:
        if controlnet == "default":
            controlnet = (
                folder / declared["controlnet"] if "controlnet" in declared else DEFAULT_CONTROLNET[architecture]
            )
        controlnet = str(controlnet)
        net = _pretrained(ControlNetModel, controlnet, "ControlNet", "--controlnet", dtype=dtype)
        for name in ("in_channels", "cross_attention_dim", "block_out_channels", "addition_embed_type"):
            ours, theirs = pipe.unet.config.get(name), net.config.get(name)
            ours, theirs = [list(v) if isinstance(v, list | tuple) else v for v in (ours, theirs)]
            if ours != theirs:
                raise StylecraftError(
                    f"ControlNet {controlnet} was made for another base model: its {name} is {theirs}, the UNet's is "
                    f"{ours}; pass a ControlNet trained on this model (--controlnet)"
                )
        pipe = controlnet_pipelines[type(pipe)].from_pipe(pipe, controlnet=net)

    text_encoder = tokenizer = None
    if content_text_encoder is not None:
        source, flag = str(content_text_encoder), "--content-text-encoder"
        # A full CLIP checkpoint (e.g. laion/CLIP-ViT-H-14-laion2B-s32B-b79K) keeps its projection size at the top.
        config = _pretrained(AutoConfig, source, "content text encoder", flag)
        overrides = {"projection_dim": config.projection_dim} if config.model_type == "clip" else {}
        text_encoder = _pretrained(CLIPTextModelWithProjection, source, "content text encoder", flag, **overrides)
        tokenizer = _pretrained(CLIPTokenizer, source, "content tokenizer", flag)
        text_encoder = text_encoder.to(device, dtype).eval()

    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=bool(os.environ.get("STYLECRAFT_QUIET")))
    sources = {
        "model": str(model),
        "ip_adapter": str(ip_adapter) if isinstance(ip_adapter, str | Path) else "state dict",
        "ip_adapter_weight": weight_name,
        "image_encoder": str(image_encoder) if image_encoder else f"{subfolder}/image_encoder".lstrip("/"),
        "controlnet": controlnet,
        "content_text_encoder": str(content_text_encoder) if content_text_encoder else None,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }
    return InstantStyle(
        pipe, sources, text_encoder, tokenizer, declared.get("architecture", ""), declared.get("block_presets", {})
    )


# ----------------------------------------------------------------------------------------------- command line


def run_cli(args: argparse.Namespace) -> int:
    """``stylecraft instantstyle``: write NNN.png, grid.png and run.json (+ inputs/) to ``--out``."""
    from safetensors.torch import load_file, save_file

    # Cheap checks first, before any model loads.
    if (args.style_image is None) == (args.style_embeds is None):
        raise StylecraftError("give exactly one of --style-image IMG or --style-embeds FILE.safetensors")
    if args.subtract is not None and args.content_prompt is None:
        raise StylecraftError("--subtract needs --content-prompt (the content to remove from the style image)")
    if args.controlnet is not None and args.content_image is None:
        raise StylecraftError("--controlnet is used with --content-image; add one or drop --controlnet")
    if args.style_weights is not None:
        if args.style_image is None:
            raise StylecraftError("--style-weights weighs style images; drop it with --style-embeds")
        normalised_weights(len(args.style_image), args.style_weights)
    style_image = [load_image(path) for path in args.style_image] if args.style_image else None
    style_embeds = None
    if args.style_embeds:
        try:
            style_embeds = load_file(args.style_embeds)["image_embeds"]
        except (OSError, KeyError, ValueError) as err:
            raise StylecraftError(
                f"{args.style_embeds} is not a style embedding file ({err.__class__.__name__}); use the "
                "inputs/style_embeds.safetensors of an earlier run"
            ) from None
    if args.content_image:
        load_image(args.content_image)  # fail early on an unreadable file

    # --out is checked and locked before the models load: a refused folder costs nothing
    with output_dir(args.out, args.overwrite) as folder:
        style = load_instantstyle(
            args.model,
            ip_adapter=args.ip_adapter,
            weight_name=args.ip_adapter_weight,
            image_encoder=args.image_encoder,
            controlnet=(args.controlnet or "default") if args.content_image else None,
            content_text_encoder=args.content_text_encoder,
            device=args.device,
            dtype=getattr(torch, args.dtype),
        )
        output = style(
            args.prompt,
            style_image,
            style_weights=args.style_weights,
            style_embeds=style_embeds,
            negative_prompt=args.negative_prompt,
            blocks=args.blocks,
            scale=args.scale,
            precise=args.precise,
            content_prompt=args.content_prompt,
            subtract=args.subtract,
            content_image=args.content_image,
            controlnet_scale=args.controlnet_scale,
            steps=args.steps,
            guidance=args.guidance,
            num_images=args.num_images,
            seed=args.seed,
        )
        settings = {
            "command": "instantstyle",
            **output.settings,
            "style_image": [str(path) for path in args.style_image] if args.style_image else None,
            "style_embeds": str(args.style_embeds) if args.style_embeds else None,
            "content_image": str(args.content_image) if args.content_image else None,
        }
        for i, image in enumerate(output.images):
            save_png(image, folder / f"{i:03d}.png", {"prompt": args.prompt, "seed": args.seed, "index": i, **settings})
        save_png(make_grid(output.images), folder / "grid.png", {"prompt": args.prompt})
        (folder / "inputs").mkdir()
        save_file({"image_embeds": output.image_embeds.contiguous()}, folder / "inputs" / "style_embeds.safetensors")
        if output.control_image is not None:
            save_png(output.control_image, folder / "inputs" / "content_edges.png")
        write_json(folder / "run.json", settings)
    print(f"wrote {len(output.images)} images to {args.out}")
    return 0
