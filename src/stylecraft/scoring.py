"""CLIP scores of generated images: text score (image ↔ prompt) and style score (image ↔ style reference).

Both are cosine similarities of CLIP embeddings, as in StyleDrop (arXiv 2306.00983, Sec. 4.1): the text score
measures how well an image follows its prompt, the style score how close it is to the reference image. Any
transformers ``CLIPModel`` works (a hub id or a folder with its tokenizer); the default is the shapes world's mini
CLIP. ``stylecraft score`` prints per-image scores and their means with standard errors as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import StylecraftError
from .io import load_image
from .validation import check_device

logger = logging.getLogger("stylecraft")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SKIPPED_FILES = ("grid.png",)  # contact sheets written next to the samples by `sample` and `instantstyle`
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch.save / pickle files


@dataclass
class ClipScorer:
    """A CLIP model with its tokenizer and image processor; embeds in batches and returns cosine scores."""

    model: Any  # transformers.CLIPModel
    tokenizer: Any  # transformers.CLIPTokenizer
    processor: Any  # transformers.CLIPImageProcessor
    source: str
    batch_size: int = 32

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """Unit-length CLIP image embeddings: [N, D]."""
        features = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processor(images=images[start : start + self.batch_size], return_tensors="pt").pixel_values
            output = self.model.get_image_features(pixel_values=pixels.to(self.model.device, self.model.dtype))
            features.append(output.pooler_output.float())
        return F.normalize(torch.cat(features), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Unit-length CLIP text embeddings: [N, D]."""
        features = []
        for start in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(
                prompts[start : start + self.batch_size],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            output = self.model.get_text_features(input_ids=tokens.input_ids.to(self.model.device))
            features.append(output.pooler_output.float())
        return F.normalize(torch.cat(features), dim=-1)

    def text_scores(self, images: list[Image.Image], prompts: str | list[str]) -> torch.Tensor:
        """Cosine of each image with its prompt (one prompt for all, or one per image): [N]."""
        prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(images):
            raise StylecraftError(f"{len(images)} images but {len(prompts)} prompts; give one prompt or one per image")
        unique = sorted(set(prompts))
        text = self.text_features(unique)[[unique.index(p) for p in prompts]]  # [N, D]
        return (self.image_features(images) * text).sum(-1)

    def style_scores(self, images: list[Image.Image], reference: Image.Image) -> torch.Tensor:
        """Cosine of each image with the style reference image: [N]."""
        return self.image_features(images) @ self.image_features([reference])[0]


def load_scorer(clip: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32) -> ClipScorer:
    """Load a ``CLIPModel`` (hub id or folder; default: the shapes world's mini CLIP) for scoring, in float32."""
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor  # same preprocessing, no torchvision
    from transformers import CLIPModel, CLIPTokenizer

    if clip is None:
        from .world import shapes_clip_dir

        clip = shapes_clip_dir()
        if not Path(clip).is_dir():
            raise StylecraftError(
                f"the shapes world's mini CLIP is not installed ({clip} is missing); pass --clip with a CLIPModel "
                "folder or hub id, e.g. openai/clip-vit-large-patch14"
            )
    check_device(device)
    source = str(Path(clip).expanduser()) if Path(clip).expanduser().is_dir() else str(clip)
    local = Path(source).is_dir()
    if local and not any(Path(source).glob("*.safetensors")):
        pickles = sorted(p.name for p in Path(source).iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:  # a pickle can run any code when loaded: never unpickle what a user points us at
            raise StylecraftError(
                f"CLIP folder {source} has weights only as a pickle ({pickles[0]}), which stylecraft never loads; "
                "convert them to model.safetensors (transformers: model.save_pretrained(folder)) and pass that"
            )
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=local, use_safetensors=True)
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise StylecraftError(
            f"could not load CLIP {clip!r} ({first}); pass --clip with a folder holding a CLIPModel and its tokenizer"
        ) from None
    if model.config.text_config.eos_token_id != tokenizer.eos_token_id:
        # CLIP pools the first position equal to eos_token_id; with a mismatched id it silently pools position 0.
        raise StylecraftError(
            f"CLIP {clip!r}: text eos_token_id {model.config.text_config.eos_token_id} != tokenizer's "
            f"{tokenizer.eos_token_id}; fix its config.json"
        )
    try:
        processor = CLIPImageProcessor.from_pretrained(source, local_files_only=local)
    except OSError:
        size = model.config.vision_config.image_size
        logger.warning("%s has no preprocessor_config.json: using OpenAI CLIP preprocessing at %dpx", clip, size)
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size=size)
    return ClipScorer(model.to(device).eval(), tokenizer, processor, source, batch_size)


def image_files(folder: str | Path) -> list[Path]:
    """The images of a ``sample`` / ``instantstyle`` output folder (or any folder), sorted; grid.png left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StylecraftError(f"--images {folder} is not a folder; pass the output folder of a run")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in SKIPPED_FILES]
    if not files:
        raise StylecraftError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return sorted(files)


def mean_and_stderr(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std / √n; None for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def run_cli(args: argparse.Namespace) -> int:
    """``stylecraft score``: JSON with per-image text/style scores and their means ± standard errors."""
    files = image_files(args.images)
    reference = load_image(args.style_image) if args.style_image else None
    scorer = load_scorer(args.clip, device=args.device)
    images = [load_image(path) for path in files]
    text = scorer.text_scores(images, args.prompt).tolist()
    style = scorer.style_scores(images, reference).tolist() if reference is not None else [None] * len(files)
    result: dict[str, Any] = {
        "images": str(args.images),
        "prompt": args.prompt,
        "style_image": args.style_image,
        "clip": scorer.source,
        "n": len(files),
        "per_image": [
            {"file": path.name, "text_score": t, "style_score": s}
            for path, t, s in zip(files, text, style, strict=True)
        ],
        "mean": {},
        "stderr": {},
    }
    for name, values in (("text_score", text), ("style_score", style if reference is not None else None)):
        result["mean"][name], result["stderr"][name] = mean_and_stderr(values) if values else (None, None)
    print(json.dumps(result, indent=2))
    return 0
