"""The shapes world's VQ tokenizer: diffusers' ``VQModel`` with a plain convolutional encoder and decoder.

diffusers' own Encoder/Decoder normalize every block with GroupNorm. On this world's images (a small coloured shape
on a large flat or textured background) the per-image normalization throws colour away: trained from scratch on
this CPU, every configuration we tried reconstructed grey shapes (oracle colour accuracy 11–15 %, chance 12.5 %;
docs/world.md lists them), while the same encoder/decoder without normalization reconstructs colour within a few
hundred steps. So this class keeps everything of ``VQModel`` that the rest of the stack uses (``encode``,
``quantize``, ``decode(..., force_not_quantize=True, shape=...)``, ``config.block_out_channels`` for the scale
factor, ``save_pretrained``/``from_pretrained``, so ``AmusedPipeline`` runs it unchanged) and swaps only the two
convolutional stacks for unnormalized residual ones.

A Muse-mini folder's ``model_index.json`` names this class (``"vqvae": ["stylecraft.world.vq", "WorldVQModel"]``,
diffusers' format), and ``stylecraft.muse`` loads the class the index names.
"""

from __future__ import annotations

import torch
from diffusers import VQModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import VectorQuantizer
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class _Residual(nn.Module):
    """x + conv(silu(conv(silu(x)))), no normalization; the second conv starts at zero (an identity block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.conv2.zero_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(nn.functional.silu(self.conv1(nn.functional.silu(x))))


class _Encoder(nn.Module):
    """Pixels -> latents. ``channels`` are the widths at 64, 32, 16 and 8 pixels (generally: at each of the
    ``len(channels) - 1`` halvings, done by strided 4×4 convs); residual blocks at the two coarsest levels only,
    where they are cheap."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], blocks: int, out_channels: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for level in range(1, len(channels)):
            layers += [nn.SiLU(), nn.Conv2d(channels[level - 1], channels[level], 4, stride=2, padding=1)]
            layers += [_Residual(channels[level]) for _ in range(blocks if level >= len(channels) - 2 else 0)]
        layers += [nn.SiLU(), nn.Conv2d(channels[-1], out_channels, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x * 2 - 1)  # centred inputs: without normalization layers, [0, 1] trains badly


class _Decoder(nn.Module):
    """Latents -> pixels: the encoder mirrored, upsampling by nearest-neighbour doubling and a 3×3 conv, with
    residual blocks at the ``residual_levels`` coarsest resolutions (2: at 8 and 16 px, as the encoder; the shipped
    VQ uses 4, every level: the world's sharp outlines, stripes and dots are drawn at the finest ones, and the
    blocks there cost about a quarter more time per step)."""

    def __init__(
        self, in_channels: int, channels: tuple[int, ...], blocks: int, out_channels: int, residual_levels: int = 2
    ):
        super().__init__()
        if not 1 <= residual_levels <= len(channels):
            raise ValueError(
                f"decoder_residual_levels must be between 1 and {len(channels)} (one per resolution of "
                f"block_out_channels {tuple(channels)}), got {residual_levels}"
            )
        top = len(channels) - 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[top], 3, padding=1)]
        layers += [_Residual(channels[top]) for _ in range(blocks)]
        for level in range(top, 0, -1):
            layers += [nn.SiLU(), nn.Upsample(scale_factor=2.0, mode="nearest")]
            layers += [nn.Conv2d(channels[level], channels[level - 1], 3, padding=1)]
            with_blocks = level - 1 > top - residual_levels
            layers += [_Residual(channels[level - 1]) for _ in range(blocks if with_blocks else 0)]
        layers += [nn.SiLU(), nn.Conv2d(channels[0], out_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return self.layers(x) * 0.5 + 0.5


class WorldVQModel(VQModel):
    """``VQModel`` with unnormalized conv stacks; images in [0, 1] like aMUSEd's VQ. See the module docstring."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (16, 48, 96, 128),
        layers_per_block: int = 1,
        latent_channels: int = 32,
        num_vq_embeddings: int = 512,
        vq_embed_dim: int | None = None,
        sample_size: int = 64,
        scaling_factor: float = 1.0,
        norm_type: str = "none",  # read by VQModel.decode: anything but "spatial" decodes without the quant map
        lookup_from_codebook: bool = True,
        force_upcast: bool = False,
        decoder_residual_levels: int = 2,  # resolutions, coarsest first, whose decoder level has residual blocks
    ):
        ModelMixin.__init__(self)  # VQModel.__init__ would build the GroupNorm stacks this class replaces
        vq_embed_dim = vq_embed_dim or latent_channels
        channels = tuple(block_out_channels)
        self.encoder = _Encoder(in_channels, channels, layers_per_block, latent_channels)
        self.quant_conv = nn.Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim, beta=0.25, remap=None, sane_index_shape=False)
        self.post_quant_conv = nn.Conv2d(vq_embed_dim, latent_channels, 1)
        self.decoder = _Decoder(
            latent_channels, channels, layers_per_block, out_channels, residual_levels=decoder_residual_levels
        )
        # PyTorch's default conv init shrinks the signal's variance about threefold per layer; with no normalization
        # to undo that, a dozen layers deep the output barely depends on the input and training learns the mean
        # image first (grey shapes). He init keeps the variance through the SiLU stack.
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and not getattr(module, "zero_init", False):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
