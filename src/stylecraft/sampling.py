"""Our Muse decoding loop: Muse CFG (Eq. 1), StyleDrop guidance (Eq. 4) and two-adapter mixing (Eq. 5-6).

The loop is aMUSEd's (diffusers' deprecated ``AmusedPipeline``): start from all-masked tokens, and at each of
``steps`` steps predict logits for every token, sample, and re-mask the least confident ones on a cosine schedule
(``AmusedScheduler.step``). With no adapter and the same settings the output equals ``AmusedPipeline``'s pixel for
pixel (tests/test_sampling.py). All guidance passes of a step run as one batched forward: rows of the batch carry
different prompts and different adapters (``AdaptedTransformer.route``).

Step-invariant conditioning (text projection, pooled + micro-conditioning embedding) is computed once per call
rather than once per step, which is where this loop saves time over the pipeline.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .adapters import AdaptedTransformer
from .errors import StylecraftError
from .muse import MuseModel


@dataclass
class SamplingConfig:
    """Settings of one sampling call (saved to run.json)."""

    steps: int = 12  # decoding steps (aMUSEd default 12; StyleDrop paper 36)
    guidance_scale: float = 10.0  # Muse CFG scale g (Eq. 1); StyleDrop's λB = g - 1
    lambda_a: float | None = None  # StyleDrop Eq. 4 style guidance λA (adapter vs base); None -> 0
    lambda_b: float | None = None  # StyleDrop Eq. 4 text guidance λB; None -> guidance_scale - 1
    temperature: list[float] = field(default_factory=lambda: [2.0, 0.0])  # [start, end] of Gumbel temperature
    negative_prompt: str = ""  # the "n" of Eq. 1 / Eq. 4
    gamma: float = 0.5  # Eq. 5-6 weight of the content adapter (at the first step, with gamma_end)
    gamma_end: float | None = None  # Eq. 5-6 γ at the last step, linear in between (None: γ at every step)
    aesthetic_score: float = 6.0  # aMUSEd micro-conditioning
    crop: list[int] = field(default_factory=lambda: [0, 0])  # aMUSEd micro-conditioning crop coordinates

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise StylecraftError(f"--steps must be at least 1, got {self.steps}")
        if self.lambda_b is not None:
            self.guidance_scale = 1.0 + self.lambda_b
        self.lambda_b = self.guidance_scale - 1.0
        for flag, value in (("--gamma", self.gamma), ("--gamma-end", self.gamma_end)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise StylecraftError(f"{flag} must be in [0, 1], got {value}")
        if len(self.temperature) not in (1, 2):
            raise StylecraftError("--temperature takes a start value and optionally an end value")


@torch.no_grad()
def sample_tokens(
    muse: MuseModel,
    prompts: list[str],
    config: SamplingConfig | None = None,
    *,
    model: AdaptedTransformer | None = None,
    adapter: str | None = None,
    style_adapter: str | None = None,
    content_adapter: str | None = None,
    content_prompts: list[str] | None = None,
    num_images_per_prompt: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Decode VQ tokens [batch, h, w] for ``prompts`` (batch = len(prompts) * num_images_per_prompt).

    Modes: no adapter -> Muse CFG (Eq. 1); ``adapter`` -> StyleDrop guidance (Eq. 4);
    ``style_adapter`` + ``content_adapter`` -> Eq. 5-6 with ``content_prompts`` (the prompts without the style).
    Images of one prompt are ordered like ``AmusedPipeline``: prompts repeated, [p0, p1, p0, p1, ...].
    """
    config = config or SamplingConfig()
    if not prompts or any(not p.strip() for p in prompts):
        raise StylecraftError("empty prompt; give a text like 'A house in watercolor painting style'")
    if num_images_per_prompt < 1:
        raise StylecraftError(f"--num-images must be at least 1, got {num_images_per_prompt}")
    two_adapters = style_adapter is not None or content_adapter is not None
    if two_adapters and (style_adapter is None or content_adapter is None or content_prompts is None):
        raise StylecraftError("two-adapter sampling needs a style adapter, a content adapter and content prompts")
    if (adapter is not None or two_adapters) and model is None:
        raise StylecraftError("sampling with adapters needs the AdaptedTransformer that holds them")

    n = num_images_per_prompt
    batch = len(prompts) * n
    negatives = [config.negative_prompt] * len(prompts)
    g, lambda_a, lambda_b = config.guidance_scale, config.lambda_a or 0.0, config.lambda_b
    gamma_end = config.gamma if config.gamma_end is None else config.gamma_end

    # Each guidance term is a group of `batch` rows: (prompts, adapter) per group, concatenated into one forward.
    if two_adapters:
        groups = [
            (prompts, style_adapter),
            (negatives, style_adapter),
            (content_prompts, content_adapter),
            (negatives, content_adapter),
        ]
    elif adapter is not None:
        groups = [(prompts, adapter), (prompts, None), (negatives, None)]
    elif g > 1.0:
        groups = [(negatives, None), (prompts, None)]  # AmusedPipeline's order: [uncond; cond]
    else:
        groups = [(prompts, None)]

    unique_texts = list(dict.fromkeys(t for texts, _ in groups for t in texts))
    pooled_all, hidden_all = muse.encode_prompts(unique_texts)
    index = {t: i for i, t in enumerate(unique_texts)}
    pooled = torch.cat([pooled_all[[index[t] for t in texts]].repeat(n, 1) for texts, _ in groups])
    hidden = torch.cat([hidden_all[[index[t] for t in texts]].repeat(n, 1, 1) for texts, _ in groups])
    rows = [name for _, name in groups for _ in range(batch)]

    height = width = muse.resolution
    micro_conds = muse.micro_conds(len(rows), height, width, tuple(config.crop), config.aesthetic_score)
    condition = _condition(muse, hidden, pooled, micro_conds)

    shape = (batch, height // muse.vae_scale_factor, width // muse.vae_scale_factor)
    latents = torch.full(shape, muse.mask_token_id, dtype=torch.long, device=muse.device)
    temperature = tuple(config.temperature) if len(config.temperature) == 2 else config.temperature[0]
    muse.scheduler.set_timesteps(config.steps, temperature, muse.device)
    use_routing = model is not None and any(r is not None for r in rows)
    disable = not progress or os.environ.get("STYLECRAFT_QUIET") == "1"
    for step, timestep in enumerate(tqdm(muse.scheduler.timesteps, desc="sampling", disable=disable, leave=False)):
        model_input = torch.cat([latents] * len(groups))
        if use_routing:
            with model.route(rows):
                logits = _denoise(muse, model_input, condition)
        else:
            logits = _denoise(muse, model_input, condition)
        parts = logits.chunk(len(groups))  # each [batch, codebook, h, w]

        if two_adapters:
            style_t, style_n, content_c, content_n = parts
            style = style_n + g * (style_t - style_n)  # Muse CFG (Eq. 1) of the style adapter on t
            content = content_n + g * (content_c - content_n)  # ... and of the content adapter on c
            # γ at this step: constant (the paper), or from γ to gamma_end, so the content adapter can lead the
            # early steps, where Muse commits the tokens that set the layout, and the style the later ones
            gamma = config.gamma + (gamma_end - config.gamma) * step / max(config.steps - 1, 1)
            logits = (1 - gamma) * style + gamma * content  # StyleDrop Eq. 5-6
        elif adapter is not None:
            adapted, base, negative = parts
            logits = adapted + lambda_a * (adapted - base) + lambda_b * (base - negative)  # StyleDrop Eq. 4
        elif g > 1.0:
            uncond, cond = parts
            logits = uncond + g * (cond - uncond)  # Muse CFG (Eq. 1), written as in AmusedPipeline
        else:
            logits = parts[0]

        latents = muse.scheduler.step(
            model_output=logits, timestep=timestep, sample=latents, generator=generator
        ).prev_sample
    return latents


def _condition(muse: MuseModel, hidden: torch.Tensor, pooled: torch.Tensor, micro_conds: torch.Tensor):
    """The step-invariant part of ``UVit2DModel.forward``: projected text and the pooled conditioning vector."""
    from diffusers.models.embeddings import get_timestep_embedding

    t = muse.transformer
    encoder_hidden_states = t.encoder_proj_layer_norm(t.encoder_proj(hidden))  # [rows, 77, hidden]
    micro = get_timestep_embedding(
        micro_conds.flatten(), t.config.micro_cond_encode_dim, flip_sin_to_cos=True, downscale_freq_shift=0
    ).reshape((hidden.shape[0], -1))
    pooled_cond = torch.cat([pooled, micro], dim=1).to(dtype=t.dtype)
    pooled_cond = t.cond_embed(pooled_cond).to(encoder_hidden_states.dtype)  # [rows, hidden]
    return encoder_hidden_states, pooled_cond


def _denoise(muse: MuseModel, input_ids: torch.Tensor, condition) -> torch.Tensor:
    """The per-step part of ``UVit2DModel.forward`` (same operations in the same order). -> [rows, codebook, h, w]"""
    t = muse.transformer
    encoder_hidden_states, pooled = condition
    hidden_states = t.embed(input_ids)
    hidden_states = t.down_block(hidden_states, pooled, encoder_hidden_states, None)
    batch, channels, height, width = hidden_states.shape
    hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    hidden_states = t.project_to_hidden(t.project_to_hidden_norm(hidden_states))
    for layer in t.transformer_layers:
        hidden_states = layer(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            cross_attention_kwargs=None,
            added_cond_kwargs={"pooled_text_emb": pooled},
        )
    hidden_states = t.project_from_hidden(t.project_from_hidden_norm(hidden_states))
    hidden_states = hidden_states.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    hidden_states = t.up_block(hidden_states, pooled, encoder_hidden_states, None)
    return t.mlm_layer(hidden_states)


def sample_images(muse: MuseModel, prompts: list[str], config: SamplingConfig | None = None, **kwargs) -> torch.Tensor:
    """Like ``sample_tokens`` but decoded: images [batch, 3, H, W] in [0, 1]."""
    return muse.decode_tokens(sample_tokens(muse, prompts, config, **kwargs))


def config_dict(config: SamplingConfig) -> dict:
    return asdict(config)
