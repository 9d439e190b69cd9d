"""The shapes world's Muse transformer: diffusers' ``UVit2DModel`` plus a learned position embedding.

``UVit2DModel`` has no position embedding. Its transformer layers see where a token sits only through the
zero padding of the convolutional blocks around them. aMUSEd has three res blocks and a downsampling conv before
its transformer, and that is enough there. Our 8×8-token mini model has a single 3×3 block, so every interior
token looks the same while all tokens are masked. The model then learns colour, style, size and roughly where
(all readable near the border), but it cannot plan an outline: Muse-mini without this embedding drew blobs (oracle
shape accuracy 18 %, chance 12.5 %). This class adds one learned ``[channels, h, w]`` table to the token
embeddings and changes nothing else. ``AmusedPipeline``, our sampler (which calls ``transformer.embed``), the
adapters, LoRA and save/load all work unchanged.

A Muse-mini folder's ``model_index.json`` names this class (``"transformer": ["stylecraft.world.transformer",
"WorldUVit2DModel"]``, diffusers' format), and ``stylecraft.muse`` loads the class the index names.
"""

from __future__ import annotations

import torch
from diffusers import UVit2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.uvit_2d import UVit2DConvEmbed
from torch import nn


class _PositionalConvEmbed(UVit2DConvEmbed):
    """``UVit2DConvEmbed`` followed by adding a learned per-position table (same output shape)."""

    def __init__(self, in_channels, block_out_channels, vocab_size, elementwise_affine, eps, bias, size: int):
        super().__init__(in_channels, block_out_channels, vocab_size, elementwise_affine, eps, bias)
        self.position = nn.Parameter(torch.randn(1, block_out_channels, size, size) * 0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings = super().forward(input_ids)
        if embeddings.shape[-2:] != self.position.shape[-2:]:
            raise ValueError(
                f"token grid {tuple(embeddings.shape[-2:])} does not match this model's position table "
                f"{tuple(self.position.shape[-2:])} (config sample_size)"
            )
        return embeddings + self.position.to(embeddings.dtype)


class WorldUVit2DModel(UVit2DModel):
    """``UVit2DModel`` whose token embedding adds a learned position table; ``sample_size`` is the token grid's
    side. Same arguments and defaults as ``UVit2DModel``."""

    # Spelled out, not **kwargs: ConfigMixin saves and reloads exactly the arguments this signature names.
    @register_to_config
    def __init__(
        self,
        hidden_size: int = 1024,
        use_bias: bool = False,
        hidden_dropout: float = 0.0,
        cond_embed_dim: int = 768,
        micro_cond_encode_dim: int = 256,
        micro_cond_embed_dim: int = 1280,
        encoder_hidden_size: int = 768,
        vocab_size: int = 8256,
        codebook_size: int = 8192,
        in_channels: int = 768,
        block_out_channels: int = 768,
        num_res_blocks: int = 3,
        downsample: bool = False,
        upsample: bool = False,
        block_num_heads: int = 12,
        num_hidden_layers: int = 22,
        num_attention_heads: int = 16,
        attention_dropout: float = 0.0,
        intermediate_size: int = 2816,
        layer_norm_eps: float = 1e-6,
        ln_elementwise_affine: bool = True,
        sample_size: int = 64,
    ):
        super().__init__(**{k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.embed = _PositionalConvEmbed(
            in_channels, block_out_channels, vocab_size, ln_elementwise_affine, layer_norm_eps, use_bias, sample_size
        )
