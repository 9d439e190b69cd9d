"""The Muse backend: aMUSEd-layout components, prompt encoding, images <-> VQ tokens, and the masked-token loss.

A Muse model (Chang et al. 2023) is a VQ tokenizer, a frozen CLIP text encoder and a bidirectional transformer
that predicts masked image tokens. diffusers ships the pieces (``UVit2DModel``, ``VQModel``, ``AmusedScheduler``);
this module loads them from a hub id, a local folder in the aMUSEd layout (transformer/, vqvae/, text_encoder/,
tokenizer/, scheduler/) or a built-in name, and provides the operations training and sampling share.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from .errors import StylecraftError

SUBFOLDERS = ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler")

# Architectures that can be built with random weights (tests, benchmarks). The aMUSEd-256/512 numbers are the
# published configs; "tiny" keeps every structural feature (conv blocks, adaLN transformer layers, cross-attention)
# at a size that runs in milliseconds.
ARCHITECTURES: dict[str, dict] = {
    "tiny": {
        "transformer": dict(
            hidden_size=32,
            use_bias=False,
            cond_embed_dim=32,
            micro_cond_encode_dim=2,
            micro_cond_embed_dim=10,
            encoder_hidden_size=32,
            vocab_size=33,
            codebook_size=32,
            in_channels=16,
            block_out_channels=16,
            num_res_blocks=1,
            downsample=False,
            upsample=False,
            block_num_heads=2,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            layer_norm_eps=1e-6,
            sample_size=4,
        ),
        "vqvae": dict(
            in_channels=3,
            out_channels=3,
            latent_channels=8,
            num_vq_embeddings=32,
            block_out_channels=[8, 16],
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            layers_per_block=1,
            norm_num_groups=4,
            mid_block_add_attention=False,
            lookup_from_codebook=True,
            force_upcast=False,
        ),
        "text_encoder": dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        ),
    },
    "amused-256": {
        "transformer": dict(
            hidden_size=1024,
            num_hidden_layers=22,
            num_attention_heads=16,
            intermediate_size=2816,
            in_channels=768,
            block_out_channels=768,
            block_num_heads=12,
            num_res_blocks=3,
            cond_embed_dim=768,
            encoder_hidden_size=768,
            micro_cond_encode_dim=256,
            micro_cond_embed_dim=1280,
            vocab_size=8256,
            codebook_size=8192,
            downsample=False,
            upsample=False,
            sample_size=16,
            use_bias=False,
            layer_norm_eps=1e-6,
        ),
        "vqvae": dict(
            in_channels=3,
            out_channels=3,
            latent_channels=64,
            num_vq_embeddings=8192,
            block_out_channels=[128, 256, 256, 512, 768],
            down_block_types=["DownEncoderBlock2D"] * 5,
            up_block_types=["UpDecoderBlock2D"] * 5,
            layers_per_block=2,
            norm_num_groups=32,
            mid_block_add_attention=False,
            lookup_from_codebook=True,
            force_upcast=False,
        ),
        # CLIP ViT-L/14 text tower with a 768-d projection.
        "text_encoder": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
        ),
    },
}
ARCHITECTURES["amused-512"] = {
    **ARCHITECTURES["amused-256"],
    "transformer": {
        **ARCHITECTURES["amused-256"]["transformer"],
        "downsample": True,
        "upsample": True,
        "sample_size": 32,
    },
}
BUILTIN_RANDOM = {f"{name}-random": name for name in ARCHITECTURES}
# Sampling settings a model is used with unless its folder names others (model_index.json, "_stylecraft"): aMUSEd's
# pipeline default CFG 10, and StyleDrop guidance λA 0 (the adapter alone).
AMUSED_SAMPLING = {"guidance_scale": 10.0, "lambda_a": 0.0}
# Built-in names of model folders that ship inside the package. Like any other folder, each says what it is in its
# model_index.json; this module knows only where it lies.
BUILTIN_FOLDERS = {"shapes": Path(__file__).parent / "world" / "weights" / "muse"}


@dataclass
class MuseModel:
    """The five components of a Muse model plus where they came from."""

    transformer: UVit2DModel
    vqvae: VQModel
    text_encoder: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer
    scheduler: AmusedScheduler
    name: str
    sampling_defaults: dict = field(default_factory=lambda: dict(AMUSED_SAMPLING))  # guidance_scale, lambda_a
    # Training recipe names by kind (round1, round2, lora, full) for this model; empty: the paper's recipes.
    recipes: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def mask_token_id(self) -> int:
        return self.scheduler.config.mask_token_id

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Default image side in pixels."""
        return self.transformer.config.sample_size * self.vae_scale_factor

    @property
    def weights_fingerprint(self) -> str:
        """Hash of the weights that tie an adapter to its base: the transformer's token embeddings and the VQ's
        codebook (what each token id means). Two releases of one architecture (e.g. a retrained shapes model) share
        ``fingerprint`` but not this; adapters record it and warn when loaded onto other weights."""
        digest = hashlib.sha256()
        for tensor in (self.transformer.embed.embeddings.weight, self.vqvae.quantize.embedding.weight):
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def fingerprint(self) -> str:
        """Hash of the architecture (all three configs): adapters record it and refuse another base."""
        configs = {
            "transformer": _plain_config(self.transformer.config),
            "vqvae": _plain_config(self.vqvae.config),
            "text_encoder": {
                k: getattr(self.text_encoder.config, k) for k in ("hidden_size", "projection_dim", "num_hidden_layers")
            },
        }
        return hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> MuseModel:
        for module in (self.transformer, self.vqvae, self.text_encoder):
            # only what changes: diffusers warns on every dtype cast, even a no-op one
            changes = {}
            if device is not None and module.device != torch.device(device):
                changes["device"] = device
            if dtype is not None and module.dtype != dtype:
                changes["dtype"] = dtype
            if changes:
                module.to(**changes)
        return self

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the aMUSEd folder layout, loadable by ``load_muse`` and by diffusers' ``AmusedPipeline``.

        ``model_index.json`` is diffusers' pipeline index (each component's ``[library, class]``) plus our own
        ``"_stylecraft"`` entry: the sampling settings and recipes the model is used with by default.
        """
        folder = Path(folder)
        self.transformer.save_pretrained(folder / "transformer")
        self.vqvae.save_pretrained(folder / "vqvae")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        self.scheduler.save_pretrained(folder / "scheduler")
        import diffusers

        index = {"_class_name": "AmusedPipeline", "_diffusers_version": diffusers.__version__}
        for component in SUBFOLDERS:
            cls = type(getattr(self, component))
            library = cls.__module__.split(".")[0]
            index[component] = [cls.__module__ if library == "stylecraft" else library, cls.__name__]
        index["_stylecraft"] = {"sampling": dict(self.sampling_defaults), "recipes": dict(self.recipes)}
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    def reference_pipeline(self):
        """diffusers' deprecated ``AmusedPipeline`` on these same components: the reference for parity tests and
        benchmarks (stylecraft samples with its own loop, ``sampling.py``)."""
        import warnings

        from diffusers import AmusedPipeline

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice
            pipe = AmusedPipeline(
                vqvae=self.vqvae,
                tokenizer=self.tokenizer,
                text_encoder=self.text_encoder,
                transformer=self.transformer,
                scheduler=self.scheduler,
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ---- text -------------------------------------------------------------------------------------------------
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids [batch, 77]; prompts longer than the tokenizer's limit are truncated with a warning."""
        max_length = self.tokenizer.model_max_length
        for prompt in prompts:
            n = len(self.tokenizer(prompt).input_ids)
            if n > max_length:
                import logging

                logging.getLogger("stylecraft").warning(
                    "prompt has %d tokens, more than the limit of %d: truncated (%r)", n, max_length, prompt[:60]
                )
        return self.tokenizer(
            prompts, return_tensors="pt", padding="max_length", truncation=True, max_length=max_length
        ).input_ids.to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled projected embedding [batch, proj] and penultimate hidden states [batch, 77, hidden], as aMUSEd."""
        outputs = self.text_encoder(self.tokenize(prompts), return_dict=True, output_hidden_states=True)
        return outputs.text_embeds, outputs.hidden_states[-2]

    # ---- images ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images [batch, 3, H, W] in [0, 1] -> VQ token ids [batch, H/f, W/f]."""
        # aMUSEd's VQ works on [0, 1] pixels (its image processor has do_normalize=False).
        latents = self.vqvae.encode(images.to(self.device, self.vqvae.dtype)).latents
        batch, _, height, width = latents.shape
        _, _, (_, _, indices) = self.vqvae.quantize(latents)
        return indices.reshape(batch, height, width)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """VQ token ids [batch, h, w] -> images [batch, 3, h*f, w*f] clipped to [0, 1]."""
        batch, height, width = tokens.shape
        shape = (batch, height, width, self.vqvae.config.latent_channels)
        return self.vqvae.decode(tokens, force_not_quantize=True, shape=shape).sample.clip(0, 1)

    def micro_conds(
        self, batch: int, height: int, width: int, crop: tuple[int, int] = (0, 0), aesthetic_score: float = 6.0
    ) -> torch.Tensor:
        """aMUSEd's micro-conditioning [batch, 5]: (width, height, crop_x, crop_y, aesthetic), in its odd order."""
        conds = torch.tensor([width, height, crop[0], crop[1], aesthetic_score], device=self.device, dtype=self.dtype)
        return conds.unsqueeze(0).expand(batch, -1)


def _plain_config(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


# ---- training objective -----------------------------------------------------------------------------------------
def cosine_mask_ratio(u: torch.Tensor) -> torch.Tensor:
    """Muse's cosine schedule: fraction of tokens masked for uniform u in [0, 1)."""
    return torch.cos(u * math.pi / 2)


def shift_grid(grid: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``grid`` [..., H, W] moved right by ``dx`` and down by ``dy`` cells (negative: left, up); the edge row or
    column is repeated into the uncovered side, so a plain background stays plain."""
    h, w = grid.shape[-2:]
    rows = (torch.arange(h, device=grid.device) - dy).clamp(0, h - 1)
    cols = (torch.arange(w, device=grid.device) - dx).clamp(0, w - 1)
    return grid[..., rows, :][..., cols]


def shift_offsets(max_shift: int) -> list[tuple[int, int]]:
    """Every (dx, dy) with both in [-max_shift, max_shift], (0, 0) first."""
    span = range(-max_shift, max_shift + 1)
    return sorted(((dx, dy) for dy in span for dx in span), key=lambda o: o != (0, 0))


def mask_tokens(
    tokens: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a cosine-scheduled random fraction of each image's tokens (at least one).

    Returns (masked input ids [batch, h, w], boolean mask [batch, h, w]).
    """
    batch = tokens.shape[0]
    flat = tokens.reshape(batch, -1)
    n = flat.shape[1]
    u = torch.rand(batch, generator=generator, device=generator.device if generator else None).to(tokens.device)
    num_masked = (cosine_mask_ratio(u) * n).round().clamp(min=1)  # [batch]
    scores = torch.rand(batch, n, generator=generator, device=generator.device if generator else None)
    ranks = scores.to(tokens.device).argsort(dim=-1).argsort(dim=-1)  # a random permutation rank per token
    mask = ranks < num_masked[:, None]
    masked = torch.where(mask, torch.full_like(flat, mask_token_id), flat)
    return masked.reshape_as(tokens), mask.reshape_as(tokens)


def masked_token_loss(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy on masked positions only. logits [batch, codebook, h, w]; tokens, mask [batch, h, w].

    ``weights`` [batch, h, w] (optional) makes it the weighted mean over the masked positions.
    """
    losses = F.cross_entropy(logits.permute(0, 2, 3, 1)[mask].float(), tokens[mask], reduction="none")
    if weights is None:
        return losses.mean()
    w = weights[mask].to(losses.dtype)
    return (losses * w).sum() / w.sum()


# ---- loading ----------------------------------------------------------------------------------------------------
def build_random_muse(architecture: str = "tiny", seed: int = 0, tokenizer: CLIPTokenizer | None = None) -> MuseModel:
    """A Muse model of a known architecture with seeded random weights (for tests and benchmarks)."""
    if architecture not in ARCHITECTURES:
        raise StylecraftError(f"unknown architecture {architecture!r}; choose one of {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[architecture]
    if tokenizer is None:
        from .tokenizer import default_tokenizer

        tokenizer = default_tokenizer()
    torch.manual_seed(seed)
    transformer = UVit2DModel(**spec["transformer"])
    vqvae = VQModel(**spec["vqvae"])
    text_config = CLIPTextConfig(
        vocab_size=max(len(tokenizer), 1000),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **spec["text_encoder"],
    )
    text_encoder = CLIPTextModelWithProjection(text_config)
    scheduler = AmusedScheduler(mask_token_id=transformer.config.vocab_size - 1)
    for module in (transformer, vqvae, text_encoder):
        module.eval().requires_grad_(False)
    return MuseModel(transformer, vqvae, text_encoder, tokenizer, scheduler, name=f"{architecture}-random")


def load_muse(
    model: str | Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> MuseModel:
    """Load a Muse model from a built-in name, a local aMUSEd-layout folder, or a hub id (e.g. amused/amused-256).

    ``None`` and ``"shapes"`` mean the shapes world's Muse-mini that ships with stylecraft.
    """
    name = "shapes" if model is None else str(model)
    if name in BUILTIN_FOLDERS:
        folder = BUILTIN_FOLDERS[name]
        if not (folder / "transformer").is_dir():
            raise StylecraftError(
                f"the {name} model is missing from {folder}; reinstall stylecraft from a full checkout, or retrain "
                "it: python -m stylecraft.world.pretrain muse (see docs/world.md)"
            )
        return _load_folder(folder, name, device, dtype)
    if name in BUILTIN_RANDOM:
        return build_random_muse(BUILTIN_RANDOM[name]).to(device, dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        missing = [sub for sub in SUBFOLDERS if not (path / sub).is_dir()]
        if missing:
            raise StylecraftError(
                f"{path} is not an aMUSEd-layout folder: missing {', '.join(m + '/' for m in missing)} "
                f"(expected {', '.join(SUBFOLDERS)})"
            )
        return _load_folder(path, str(path), device, dtype)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise StylecraftError(
            f"model {name!r} is not a folder, a built-in name ({', '.join([*BUILTIN_FOLDERS, *BUILTIN_RANDOM])}) "
            "or a hub id like 'amused/amused-256'"
        )
    return _load_folder(name, name, device, dtype)


def check_eos(text_encoder, tokenizer, where: str) -> None:
    """Refuse a tokenizer whose eos id differs from the text encoder's: CLIP pools the first position equal to
    eos_token_id, so with a mismatched id it silently pools position 0 for every prompt."""
    if text_encoder.config.eos_token_id != tokenizer.eos_token_id:
        raise StylecraftError(
            f"{where}: text encoder eos_token_id {text_encoder.config.eos_token_id} != tokenizer's "
            f"{tokenizer.eos_token_id}; the tokenizer is not the one this text encoder was trained with"
        )


def model_index(model: str | Path | None) -> dict:
    """The ``model_index.json`` of a built-in name or local folder (diffusers' pipeline index: each component's
    ``[library, class]``, plus our ``"_stylecraft"`` defaults); ``{}`` for hub ids, random builds and folders
    without one."""
    name = "shapes" if model is None else str(model)
    path = BUILTIN_FOLDERS.get(name, Path(name).expanduser()) / "model_index.json"
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StylecraftError(f"{path} is not valid JSON ({err}); restore it from the model's release") from None
    if not isinstance(index, dict):
        raise StylecraftError(f"{path} must hold a JSON object; restore it from the model's release")
    return index


def model_defaults(model: str | Path | None) -> dict:
    """What a model folder says it is used with: ``{"sampling": {...}, "recipes": {...}}`` (either may be
    missing; then aMUSEd's sampling settings and the paper's recipes apply)."""
    settings = model_index(model).get("_stylecraft") or {}
    sampling = settings.get("sampling", {}) if isinstance(settings, dict) else None
    recipes = settings.get("recipes", {}) if isinstance(settings, dict) else None
    if not (
        isinstance(sampling, dict)
        and set(sampling) <= set(AMUSED_SAMPLING)
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in sampling.values())
        and isinstance(recipes, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in recipes.items())
    ):
        raise StylecraftError(
            f'model_index.json of {model}: "_stylecraft" must be {{"sampling": {{"guidance_scale": number, '
            f'"lambda_a": number}}, "recipes": {{kind: recipe name}}}}, got {settings!r}'
        )
    return settings


def _component_class(source: str | Path, index: dict, component: str, base: type) -> type:
    """The class that loads ``component``: the one ``model_index.json`` names, else ``base`` (diffusers' own).

    Only diffusers and stylecraft modules may be named, and only subclasses of ``base``: a folder must not be able
    to make us import arbitrary code. A folder without an index whose config names a class diffusers lacks (e.g. a
    subclass of ours) is refused by name instead of loading the wrong class.
    """
    entry = index.get(component)
    if entry is None:
        config = Path(str(source)) / component / "config.json"
        try:
            class_name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return base  # from_pretrained reports the broken file
        if class_name in (None, base.__name__) or isinstance(
            getattr(importlib.import_module("diffusers"), str(class_name), None), type
        ):
            return base
        raise StylecraftError(
            f"{config} names class {class_name!r}, which is not diffusers'; the folder needs a model_index.json "
            f'that names its module, e.g. "{component}": ["stylecraft.world.transformer", "{class_name}"]'
        )
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(part, str) for part in entry)):
        raise StylecraftError(f"model_index.json of {source}: {component} must be [library, class], got {entry!r}")
    library, class_name = entry
    if library != "diffusers" and not library.startswith("stylecraft."):
        raise StylecraftError(
            f"model_index.json of {source} names {component} class {library}.{class_name}; only diffusers and "
            "stylecraft classes are loaded"
        )
    try:
        cls = getattr(importlib.import_module(library), class_name, None)
    except ImportError:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise StylecraftError(
            f"model_index.json of {source} names {component} class {library}.{class_name}, which is not a "
            f"{base.__name__}; fix the entry or upgrade stylecraft"
        )
    return cls


def _load_folder(source: str | Path, name: str, device, dtype) -> MuseModel:
    index = model_index(source) if Path(str(source)).is_dir() else {}
    kwargs = {"local_files_only": Path(str(source)).is_dir()}
    transformer_class = _component_class(source, index, "transformer", UVit2DModel)
    vq_class = _component_class(source, index, "vqvae", VQModel)
    try:
        transformer = transformer_class.from_pretrained(source, subfolder="transformer", **kwargs)
        vqvae = vq_class.from_pretrained(source, subfolder="vqvae", **kwargs)
        text_encoder = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder", **kwargs)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
        scheduler = AmusedScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise StylecraftError(
            f"could not load model {name!r}: {first_line}. Pass a local aMUSEd-layout folder "
            "(the hub is not reachable offline)"
        ) from None
    check_eos(text_encoder, tokenizer, f"model {name!r}")
    for module in (transformer, vqvae, text_encoder):
        module.eval().requires_grad_(False)
    muse = MuseModel(transformer, vqvae, text_encoder, tokenizer, scheduler, name=name).to(device, dtype)
    # A model folder names the settings it samples and trains with (a shapes-world Muse-mini at aMUSEd's CFG 10
    # fills its backgrounds with white blobs); without them, aMUSEd's and the paper's apply.
    defaults = model_defaults(source) if index else {}
    muse.sampling_defaults = {**AMUSED_SAMPLING, **defaults.get("sampling", {})}
    muse.recipes = dict(defaults.get("recipes", {}))
    return muse
