"""Train ``shapes-sd``, the shapes world's latent diffusion model in Stable Diffusion 1.5's folder layout.

    python -m stylecraft.world.pretrain sd-vae  --out runs/world/sd-vae
    python -m stylecraft.world.pretrain sd-unet --out runs/world/sd-unet --vae runs/world/sd-vae

``sd-vae`` trains an ``AutoencoderKL`` on renders of every style (reconstruction + SD's small KL term); ``sd-unet``
trains a ``UNet2DConditionModel`` on that VAE's latents of renders of the SEEN styles only, conditioned on the mini
CLIP's text tower (classifier-free dropout of the caption), and writes ``OUT/shapes-sd/``: model_index.json, unet/,
vae/, text_encoder/, tokenizer/, scheduler/, feature_extractor/ (no safety checker), which
``StableDiffusionPipeline.from_pretrained`` loads unchanged. Its IP-Adapter and ControlNet: ``train_sd_adapters``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import StylecraftError
from ..io import make_grid
from . import WEIGHTS, renderer, space
from .oracles import Oracles, oracle_accuracy
from .pretrain import EVAL_SEED, Recipe, evaluation_oracles, finish, to_tensor, train_loop

# SD 1.5's noise schedule (runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json).
NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The torch generator of training step ``step`` (noise, timesteps, dropout), seeded by ``(seed, step)`` like
    the render stream, so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def clip_folder(path: str | Path | None) -> Path:
    """The mini CLIP to build on: a CLIP folder, a CLIP run folder (holding ``clip/``), or None for the shipped one."""
    folder = WEIGHTS / "clip" if path is None else Path(path)
    folder = folder / "clip" if (folder / "clip" / "config.json").is_file() else folder
    if not (folder / "config.json").is_file():
        raise StylecraftError(
            f"no mini CLIP in {path} (no config.json); pass --clip with a CLIP folder or run folder, or omit it for "
            "the shipped one"
        )
    return folder


def build_vae(model: dict):
    """An ``AutoencoderKL`` for 64×64 RGB renders; ``model`` holds its sizes (recipe ``model``). Each entry of
    ``block_out_channels`` after the first halves the resolution: 4 entries give 8×8 latents."""
    from diffusers import AutoencoderKL

    levels = len(model["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        sample_size=renderer.SIZE,
        **model,
    )


def build_unet(model: dict, latent_size: int, latent_channels: int, cross_attention_dim: int):
    """A ``UNet2DConditionModel`` with cross-attention in every down, mid and up block (so which blocks carry style
    is a real question for InstantStyle), one resolution level per entry of ``block_out_channels``."""
    from diffusers import UNet2DConditionModel

    levels = len(model["block_out_channels"])
    if levels < 3:
        raise StylecraftError(f"shapes-sd's UNet needs at least 3 resolution levels, got block_out_channels {levels}")
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=["CrossAttnDownBlock2D"] * levels,
        up_block_types=["CrossAttnUpBlock2D"] * levels,
        cross_attention_dim=cross_attention_dim,
        **model,
    )


def text_tower(folder: Path):
    """The mini CLIP's text tower as SD 1.5's ``text_encoder`` (a ``CLIPTextModel``: the pipeline reads its last
    hidden states) and its tokenizer."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(folder, local_files_only=True)
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(folder, local_files_only=True)


@dataclass
class LatentDiffusion:
    """The frozen parts every denoiser stage shares (UNet, IP-Adapter, ControlNet) and the forward process."""

    vae: object  # AutoencoderKL
    text_encoder: object  # CLIPTextModel
    tokenizer: object  # CLIPTokenizer
    scheduler: object  # DDPMScheduler (training)

    @classmethod
    def from_pipeline(cls, pipe) -> LatentDiffusion:
        """The frozen parts of a loaded shapes-sd pipeline (``load_shapes_sd``), with DDPM on its noise schedule."""
        from diffusers import DDPMScheduler

        pipe.vae.eval().requires_grad_(False)
        pipe.text_encoder.eval().requires_grad_(False)
        return cls(pipe.vae, pipe.text_encoder, pipe.tokenizer, DDPMScheduler.from_config(pipe.scheduler.config))

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions -> the text encoder's last hidden states [n, tokens, width], as the pipeline computes them."""
        ids = self.tokenizer(
            captions, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True
        ).input_ids
        return self.text_encoder(torch.tensor(ids))[0]

    @torch.no_grad()
    def noised(self, images: np.ndarray, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Renders -> (noisy latents, timesteps, regression target), the DDPM forward process on the VAE's latents."""
        posterior = self.vae.encode(to_tensor(images) * 2 - 1).latent_dist
        latents = posterior.sample(generator) * self.vae.config.scaling_factor  # [n, c, h, w]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(self.scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)  # sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε (DDPM Eq. 4)
        if self.scheduler.config.prediction_type == "v_prediction":
            return noisy, timesteps, self.scheduler.get_velocity(latents, noise, timesteps)
        return noisy, timesteps, noise


def load_shapes_sd(folder: Path):
    """The ``StableDiffusionPipeline`` in a shapes-sd folder (written by ``sd-unet``), its UNet frozen."""
    from diffusers import StableDiffusionPipeline

    if not (folder / "model_index.json").is_file():
        raise StylecraftError(
            f"{folder} is not a shapes-sd folder (no model_index.json); train it first (python -m "
            "stylecraft.world.pretrain sd-unet --out runs/world/sd-unet) and pass --sd runs/world/sd-unet/shapes-sd"
        )
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.unet.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def drop_captions(captions: list[str], drop: torch.Tensor) -> list[str]:
    """The empty prompt where ``drop`` is True: classifier-free guidance's unconditional branch."""
    return ["" if dropped else caption for caption, dropped in zip(captions, drop.tolist(), strict=True)]


# ----------------------------------------------------------------------------------------------- VAE


def train_sd_vae(recipe: Recipe, out: Path, resume: bool, oracles: Path) -> None:
    """Reconstruction (squared + absolute error) plus SD's small KL term, on renders of every style."""
    torch.manual_seed(recipe.seed)
    if recipe.extra.get("init"):  # a later stage: continue the VAE of an earlier run
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(Path(recipe.extra["init"]) / "vae", local_files_only=True)
    else:
        vae = build_vae(recipe.model)
    kl_weight = recipe.extra.get("kl_weight", 1e-6)
    lowpass_weight = recipe.extra.get("lowpass_weight", 0.0)
    # "decoder": the encoder (so the latent space a UNet was trained on) stays as it is; the decoder learns on
    train = recipe.extra.get("train", "all")
    if train not in ("all", "decoder"):
        raise StylecraftError(f"extra.train must be 'all' or 'decoder', got {train!r}")
    frozen = [vae.encoder, vae.quant_conv] if train == "decoder" else []
    for module in frozen:
        module.requires_grad_(False)

    def step_fn(step):
        images = space.recipe_batch(recipe.extra, recipe.batch_size, recipe.seed, step).images  # v2: seen styles
        x = to_tensor(images) * 2 - 1  # [n, 3, 64, 64] in [-1, 1], as SD's VAE takes pixels
        with torch.set_grad_enabled(not frozen):
            posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(step_generator(recipe.seed, step))).sample.float()
        error = ((reconstruction - x).square() + 0.5 * (reconstruction - x).abs()).mean()
        if lowpass_weight:  # the colours of 4×4 patches, which a per-pixel loss lets drift while edges dominate it
            error = error + lowpass_weight * (F.avg_pool2d(reconstruction, 4) - F.avg_pool2d(x, 4)).square().mean()
        # SD's ratio: reconstruction summed over pixels, KL summed over latents × kl_weight (1e-6); both / pixels here.
        kl = posterior.kl().mean() / x[0].numel()
        return error + kl_weight * kl, {"kl": round(kl.item(), 4)}

    trainable = [p for p in vae.parameters() if p.requires_grad]
    wall, history = train_loop(recipe, out, {"vae": vae}, trainable, step_fn, resume)
    if not frozen:  # latents of unit variance for the UNet, as SD's 0.18215 does for its VAE (a frozen encoder
        with torch.no_grad():  # keeps the scaling its UNet was trained with)
            images, _ = renderer.render_batch(256, EVAL_SEED)
            spread = vae.encode(to_tensor(images) * 2 - 1).latent_dist.mean.std().item()
        vae.register_to_config(scaling_factor=round(1.0 / spread, 5))
    vae.save_pretrained(out / "vae")
    contact_sheet(vae).save(out / "reconstructions.png")
    metrics = evaluate_vae(vae, evaluation_oracles(oracles), recipe.eval_images)
    if space.on_space(recipe.extra):
        metrics["space"] = evaluate_vae_space(vae, evaluation_oracles(oracles), recipe.eval_images)
    finish(out, "sd-vae", recipe, wall, history, metrics)


@torch.no_grad()
def reconstruct_vae(vae, images: np.ndarray) -> torch.Tensor:
    """uint8 [n, 64, 64, 3] -> the VAE's reconstruction of the posterior mean, float [n, 3, 64, 64] in [0, 1]."""
    x = to_tensor(images) * 2 - 1
    return ((vae.decode(vae.encode(x).latent_dist.mean).sample + 1) / 2).clamp(0, 1)


def contact_sheet(vae, rows: int = 2) -> Image.Image:
    """One render per style (columns, in ``renderer.STYLES`` order) over its reconstruction, ``rows`` such pairs."""
    tiles = []
    for row in range(rows):
        images = np.concatenate(
            [renderer.render_batch(1, EVAL_SEED + row, (style,))[0] for style in renderer.STYLES]
        )  # [styles, 64, 64, 3]
        recon = (reconstruct_vae(vae, images).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        tiles += [Image.fromarray(image) for image in (*images, *recon)]
    return make_grid(tiles, columns=len(renderer.STYLES))


def evaluate_vae(vae, oracles: Oracles, n: int) -> dict:
    """Oracle accuracy on fresh renders and on their reconstructions, seen and held-out styles; pixel MSE."""
    result = {}
    for group, styles in (("seen", renderer.SEEN_STYLES), ("held_out", renderer.HELD_OUT_STYLES)):
        images, scenes = renderer.render_batch(n, EVAL_SEED, styles)
        recon = torch.cat([reconstruct_vae(vae, images[i : i + 64]) for i in range(0, n, 64)])
        result[group] = {
            "original": oracle_accuracy(oracles, images, scenes.labels()),
            "reconstruction": oracle_accuracy(oracles, recon, scenes.labels()),
            "pixel_mse": round(F.mse_loss(recon, to_tensor(images)).item(), 5),
        }
    return result


def evaluate_vae_space(vae, oracles: Oracles, n: int) -> dict:
    """Per family of the style space: ``space_eval.autoencoder_report`` of the VAE's reconstructions."""
    from .space_eval import autoencoder_report

    return autoencoder_report(lambda x: reconstruct_vae(vae, x), oracles, n, EVAL_SEED)


# ----------------------------------------------------------------------------------------------- UNet


def train_sd_unet(recipe: Recipe, out: Path, resume: bool, vae_run: Path, clip: Path | None, oracles: Path) -> None:
    """Denoising on the VAE's latents of seen-style renders, caption dropped with ``extra.empty_prompt_prob``."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    if not (vae_run / "vae" / "config.json").is_file():
        raise StylecraftError(
            f"no VAE in {vae_run}/vae: train it first (python -m stylecraft.world.pretrain sd-vae --out {vae_run}) "
            "or pass --vae RUN_FOLDER"
        )
    prediction = recipe.extra.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise StylecraftError(f"extra.prediction_type must be epsilon or v_prediction, got {prediction!r}")
    empty_prompt_prob = recipe.extra.get("empty_prompt_prob", 0.1)
    clip = clip_folder(clip)
    vae = AutoencoderKL.from_pretrained(vae_run / "vae", local_files_only=True).eval().requires_grad_(False)
    text_encoder, tokenizer = text_tower(clip)
    parts = LatentDiffusion(vae, text_encoder, tokenizer, DDPMScheduler(**NOISE_SCHEDULE, prediction_type=prediction))
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    torch.manual_seed(recipe.seed)
    if recipe.extra.get("init"):  # a later stage: continue an earlier run's UNet (its shapes-sd folder)
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(Path(recipe.extra["init"]) / "shapes-sd" / "unet")
    else:
        unet = build_unet(
            recipe.model, renderer.SIZE // scale, vae.config.latent_channels, text_encoder.config.hidden_size
        )

    def step_fn(step):
        batch = space.recipe_batch(recipe.extra, recipe.batch_size, recipe.seed, step, renderer.SEEN_STYLES)
        generator = step_generator(recipe.seed, step)  # never a held-out style or family
        noisy, timesteps, target = parts.noised(batch.images, generator)
        drop = torch.rand(len(batch.images), generator=generator) < empty_prompt_prob
        text = parts.encode_text(drop_captions(batch.captions, drop))
        return F.mse_loss(unet(noisy, timesteps, text).sample.float(), target), {}

    wall, history = train_loop(recipe, out, {"unet": unet}, list(unet.parameters()), step_fn, resume)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        # DDPM trains; DDIM samples in a few dozen steps from the same noise schedule.
        scheduler=DDIMScheduler(
            **NOISE_SCHEDULE, prediction_type=prediction, clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor.from_pretrained(clip, local_files_only=True),  # [-1, 1] at 64×64
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out / "shapes-sd")
    pipe = load_shapes_sd(out / "shapes-sd")
    settings = recipe.extra.get("eval", {})
    metrics = evaluate_sd(pipe, evaluation_oracles(oracles), settings) if settings.get("images", 128) else {}
    if metrics and space.on_space(recipe.extra):
        metrics["space"] = evaluate_sd_space(pipe, evaluation_oracles(oracles), settings)
    finish(out, "sd-unet", recipe, wall, history, metrics)


@torch.no_grad()
def sample(pipe, prompts: list[str], settings: dict, images: list | None = None, **shared) -> tuple[torch.Tensor, list]:
    """CFG samples [n, 3, 64, 64] in [0, 1] of ``prompts``, 16 a batch, batch ``i`` seeded ``EVAL_SEED + i``, with
    ``settings``' steps (25) and guidance (3.0); ``images``: one ControlNet image per prompt; ``shared``: more
    pipeline arguments (e.g. ``ip_adapter_image``). Also returns each batch's seconds."""
    sampler = {"num_inference_steps": settings.get("steps", 25), "guidance_scale": settings.get("guidance", 3.0)}
    outputs, seconds = [], []
    for i in range(0, len(prompts), 16):
        began = time.time()
        per_prompt = {"image": images[i : i + 16]} if images is not None else {}
        generator = torch.Generator().manual_seed(EVAL_SEED + i)
        outputs.append(
            pipe(prompts[i : i + 16], generator=generator, output_type="pt", **sampler, **per_prompt, **shared).images
        )
        seconds.append(time.time() - began)
    return torch.cat(outputs), seconds


def evaluate_sd(pipe, oracles: Oracles, settings: dict) -> dict:
    """Oracle accuracy of CFG samples of fresh prompts, seen styles (the target) and held-out ones (for reference),
    and the seconds 16 images take (median over the batches)."""
    result = {"sampler": {"images": 128, "steps": 25, "guidance": 3.0, **settings}}
    for group, styles in (("seen", renderer.SEEN_STYLES), ("held_out", renderer.HELD_OUT_STYLES)):
        scenes = renderer.sample_scenes(settings.get("images", 128), np.random.default_rng(EVAL_SEED), styles)
        images, seconds = sample(pipe, scenes.captions(), settings)
        result[f"{group}_seconds_per_16_images"] = round(float(np.median(seconds)), 2)  # a smaller last batch too
        result[group] = {k: round(v, 4) for k, v in oracle_accuracy(oracles, images, scenes.labels()).items()}
    return result


def evaluate_sd_space(pipe, oracles: Oracles, settings: dict) -> dict:
    """Prompts naming the space's seen styles (the target) and held-out ones (words it never read, for reference):
    oracle shape, colour and size, and style (the asked style retrieved among 50, ``space_eval.prompted_report``)."""
    from .space_eval import prompted_report

    return prompted_report(
        lambda prompts: sample(pipe, prompts, settings)[0], oracles, settings.get("images", 128), EVAL_SEED
    )
