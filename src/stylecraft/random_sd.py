"""Stable Diffusion 1.5 / XL pieces with seeded random weights, for tests and benchmarks (no hub, no downloads).

``UNET_CONFIGS`` holds the published UNet configs of SD 1.5 (``runwayml/stable-diffusion-v1-5``) and SDXL base
(``stabilityai/stable-diffusion-xl-base-1.0``) plus tiny versions that keep the block layout InstantStyle addresses
(SDXL: three levels, cross-attention in down 1-2 and up 0-1, three attentions per up block; SD 1.5: four levels with
cross-attention in down 0-2, the mid block and up 1-3). IP-Adapters are written the way diffusers' own tests build
them: ``{"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight", "1.to_v_ip.weight", "3.…"}}`` with one odd key
pair per cross-attention processor, in ``unet.attn_processors`` order.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

SD15_BLOCKS = dict(
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)
SDXL_BLOCKS = dict(
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    addition_embed_type="text_time",
    use_linear_projection=True,
)
UNET_CONFIGS: dict[str, dict] = {
    # runwayml/stable-diffusion-v1-5 unet/config.json (860 M parameters).
    "sd15": dict(
        **SD15_BLOCKS,
        block_out_channels=[320, 640, 1280, 1280],
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
        sample_size=64,
        norm_num_groups=32,
    ),
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2.57 B parameters).
    "sdxl": dict(
        **SDXL_BLOCKS,
        block_out_channels=[320, 640, 1280],
        layers_per_block=2,
        attention_head_dim=[5, 10, 20],
        transformer_layers_per_block=[1, 2, 10],
        cross_attention_dim=2048,
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        sample_size=128,
        norm_num_groups=32,
    ),
    "tiny-sd15": dict(
        **SD15_BLOCKS,
        block_out_channels=[16, 32, 32, 32],
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=16,  # the text encoder's hidden size, like SD 1.5's 768
        sample_size=16,
        norm_num_groups=8,
    ),
    # cross_attention_dim 32 = the two text encoders' hidden sizes concatenated (16 + 16), like SDXL's 768 + 1280;
    # projection_class_embeddings_input_dim = 6 time ids × 8 + text_encoder_2's projection (16), like 6×256 + 1280.
    "tiny-sdxl": dict(
        **SDXL_BLOCKS,
        block_out_channels=[16, 32, 32],
        layers_per_block=2,
        attention_head_dim=[2, 4, 4],
        transformer_layers_per_block=[1, 1, 2],
        cross_attention_dim=32,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64,
        sample_size=16,
        norm_num_groups=8,
    ),
}
TINY_EMBED_DIM = 16  # tiny CLIP projection size (bigG: 1280, ViT-H: 1024)


def build_unet(architecture: str, seed: int = 0) -> UNet2DConditionModel:
    """A UNet of ``UNET_CONFIGS[architecture]`` with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIGS[architecture]).eval().requires_grad_(False)


def _tiny_text_encoder(tokenizer: CLIPTokenizer, projection: bool):
    config = CLIPTextConfig(
        vocab_size=max(len(tokenizer), 1000), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=TINY_EMBED_DIM, max_position_embeddings=77, hidden_act="gelu",
        # CLIP pools the first eos position: these ids must be the tokenizer's (see REFERENCE.md).
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval().requires_grad_(False)


def build_tiny_pipeline(architecture: str, tokenizer: CLIPTokenizer, seed: int = 0):
    """A tiny random ``StableDiffusionPipeline`` ("tiny-sd15") or ``StableDiffusionXLPipeline`` ("tiny-sdxl").

    Images are 32×32 (latents 16×16). No image encoder: that ships with the IP-Adapter (``save_tiny_ip_adapter``).
    """
    unet = build_unet(architecture, seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[16, 32], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32,
    ).eval()  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    if architecture == "tiny-sd15":
        return StableDiffusionPipeline(
            vae=vae, text_encoder=_tiny_text_encoder(tokenizer, projection=False), tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=_tiny_text_encoder(tokenizer, projection=False),
        text_encoder_2=_tiny_text_encoder(tokenizer, projection=True), tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=scheduler,
    )  # fmt: skip


def ip_adapter_state_dict(
    unet: UNet2DConditionModel, image_embed_dim: int, plus: bool = False, seed: int = 0
) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter in the original file layout, as diffusers' tests build it.

    Basic adapters project the pooled CLIP image embedding (``image_embed_dim``) to 4 tokens; ``plus=True`` builds a
    Plus adapter (a 4-layer resampler over the encoder's patch tokens, whose width is then ``image_embed_dim``).
    """
    torch.manual_seed(seed)
    cross_dim = unet.config.cross_attention_dim
    ip_layers = {}
    key_id = 1  # odd ids: the cross-attention processor of each attn1/attn2 pair
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden_size = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden_size = list(reversed(unet.config.block_out_channels))[int(name.split(".")[1])]
        else:
            hidden_size = unet.config.block_out_channels[int(name.split(".")[1])]
        weights = IPAdapterAttnProcessor2_0(hidden_size, cross_dim).state_dict()
        ip_layers[f"{key_id}.to_k_ip.weight"] = weights["to_k_ip.0.weight"]
        ip_layers[f"{key_id}.to_v_ip.weight"] = weights["to_v_ip.0.weight"]
        key_id += 2
    if not plus:
        projection = ImageProjection(image_embed_dim, cross_dim, num_image_text_embeds=4).state_dict()
        image_proj = {key.replace("image_embeds", "proj"): value for key, value in projection.items()}
        return {"image_proj": image_proj, "ip_adapter": ip_layers}
    # diffusers infers heads from to_q (heads × 64) and always builds 4 layers with 4× feed-forward.
    resampler = IPAdapterPlusImageProjection(
        embed_dims=image_embed_dim, output_dims=cross_dim, hidden_dims=32, depth=4, heads=1, num_queries=4
    ).state_dict()
    image_proj = {}
    for key, value in resampler.items():  # undo diffusers' renaming (loaders/unet.py) back to the original names
        if ".attn.to_k." in key:
            value = torch.cat([value, resampler[key.replace("to_k", "to_v")]])
            key = key.replace("to_k", "to_kv")
        elif ".attn.to_v." in key:
            continue
        for new, old in (
            ("attn.to_out.0", "0.to_out"), ("attn.", "0."), ("ln0", "0.norm1"), ("ln1", "0.norm2"),
            ("ff.0", "1.0"), ("ff.1.net.0.proj", "1.1"), ("ff.1.net.2", "1.3"),
        ):  # fmt: skip
            key = key.replace(new, old)
        image_proj[key] = value
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def save_tiny_ip_adapter(
    folder: str | Path,
    unet: UNet2DConditionModel,
    plus: bool = False,
    seed: int = 0,
    weight_name="ip-adapter.safetensors",
) -> Path:
    """Write a tiny IP-Adapter in h94/IP-Adapter's layout: ``weight_name`` (flat safetensors) + ``image_encoder/``."""
    folder = Path(folder)
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=TINY_EMBED_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=TINY_EMBED_DIM,
    )  # fmt: skip
    CLIPVisionModelWithProjection(vision).save_pretrained(folder / "image_encoder")
    CLIPImageProcessor(size=32, crop_size=32).save_pretrained(folder / "image_encoder")
    state_dict = ip_adapter_state_dict(unet, TINY_EMBED_DIM, plus=plus, seed=seed + 1)
    flat = {f"{part}.{key}": value.contiguous() for part, values in state_dict.items() for key, value in values.items()}
    save_file(flat, folder / weight_name)
    return folder / weight_name
