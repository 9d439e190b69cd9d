"""DreamBooth (Ruiz et al. 2023) on Muse: a content adapter that learns one object from a few images of it.

The object's images are captioned with a rare token before the class noun ("a large orange sks glyph in flat color
style"). Class-prior preservation adds, at every training step, the same loss on a second batch: images that the
frozen base draws for the class prompt, the caption without the rare token ("a large orange glyph in flat color
style"). With Muse's masked-token cross-entropy CE in place of the paper's denoising error:

    loss = CE(adapter(masked x), x | c) + λ_prior · CE(adapter(masked x_pr), x_pr | c_pr)      # DreamBooth Eq. 2

so the adapter may change what the rare token draws, but is held to what the base draws for the class (the paper's
guard against language drift and lost diversity). The training loop is ``training.train_adapter`` (its
``prior_tokens``); this module draws the prior images and checks the inputs.

The prior images are drawn once, before training, with the base's own sampling settings and the run's seed, so a
``--resume`` draws the same ones. Their VQ tokens are kept as drawn (as Round 2 keeps its picks': encoding the
decoded images again would not give them back), and a grid of them is written to ``prior_images.png``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .adapters import AdaptedTransformer
from .errors import StylecraftError
from .io import make_grid, save_png, to_pil_images
from .muse import MuseModel
from .sampling import SamplingConfig, sample_tokens
from .training import TrainConfig, train_adapter


def class_prior_tokens(muse: MuseModel, class_prompt: str, count: int, seed: int = 0) -> torch.Tensor:
    """VQ tokens [count, h, w] of ``count`` images the frozen base draws for ``class_prompt``: Muse CFG (Eq. 1) at
    the model's own guidance scale, 12 steps, one ``torch.Generator('cpu')`` seeded with ``seed``."""
    config = SamplingConfig(guidance_scale=muse.sampling_defaults["guidance_scale"])
    generator = torch.Generator("cpu").manual_seed(seed)
    return sample_tokens(
        muse, [class_prompt], config, num_images_per_prompt=count, generator=generator, progress=False
    )  # no adapter: the base alone


def train_dreambooth(
    muse: MuseModel,
    images: list[Image.Image],
    prompts: list[str],
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    prior_tokens: torch.Tensor | None = None,
) -> AdaptedTransformer:
    """Train a content adapter on the object's ``images`` (captioned ``prompts``, with the rare token) DreamBooth's
    way and write the adapter folder ``out``; ``config.class_prompt`` names the class (the prompt without the rare
    token). With ``config.lambda_prior`` 0 this is plain training on the images (no prior images are drawn; the
    shapes model's own recipe, ``shapes-dreambooth``, measured best so: docs/two-adapters.md).
    ``prior_tokens``: the class images when they are drawn already (``class_prior_tokens``; runs on one base share
    them), else they are drawn here."""
    class_prompt = (config.class_prompt or "").strip()
    if config.lambda_prior > 0 and not class_prompt:
        raise StylecraftError(
            "the prior term needs --class-prompt: the training prompt without its rare token, e.g. 'a large orange "
            "glyph in flat color style' for 'a large orange sks glyph in flat color style' (or --lambda-prior 0)"
        )
    if class_prompt and class_prompt in prompts:
        raise StylecraftError(
            f"--class-prompt {class_prompt!r} is a training prompt; name the object with a rare token in --prompt "
            "(e.g. 'a sks glyph') and the class without it"
        )
    prior = None
    if config.lambda_prior > 0:
        prior = prior_tokens
        if prior is None:
            prior = class_prior_tokens(muse, class_prompt, config.num_class_images, seed=config.seed)
    model = train_adapter(
        muse, images, prompts, config, out, resume=resume, overwrite=overwrite, progress=progress, prior_tokens=prior
    )
    if prior is not None:  # provenance: what the prior term held the adapter to
        drawn = to_pil_images(muse.decode_tokens(prior))
        save_png(make_grid(drawn, columns=8), Path(out) / "prior_images.png", {"prompt": class_prompt})
    return model
