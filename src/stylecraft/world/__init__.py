"""The shapes world: renderer, captions, oracles and the shipped mini models (see docs/world.md)."""

from __future__ import annotations

from pathlib import Path

from .renderer import (
    COLOUR_NAMES,
    GLYPH,
    GLYPH_WORDS,
    HELD_OUT_STYLES,
    POSITIONS,
    SEEN_STYLES,
    SHAPES,
    SIZES,
    STYLES,
    Scenes,
    caption,
    glyph_caption,
    parse_caption,
    render,
    render_batch,
    render_blobs,
    render_glyphs,
    render_prompts,
    render_strokes,
    sample_scenes,
    stream,
    vocabulary,
)

WEIGHTS = Path(__file__).parent / "weights"

# How Muse-mini is sampled unless told otherwise (`stylecraft sample`/`feedback`, `api.sample`) and in every
# evaluation, so that the commands give what the reports measured. aMUSEd's CFG 10 (with λA 0) is far too strong
# here: Round-1 adapters of the 3 held-out styles drew style 0.14 and content 0.75 with it, against 0.49 and 0.84
# with these (development seed 777, 32 images per style; `python scripts/muse_dev_checks.py adapters --guidance 10 2
# --lambda-a 0 0.25 --images-per-prompt 4`).
# CFG 2: a sweep of 1-5 on the base model (seed 777, `python scripts/muse_dev_checks.py guidance`). StyleDrop's λA
# 0.5: on the Muse-mini and oracles shipped 2026-11-30 it beat 0.25 on style on each of the sampling seeds 777, 778
# and 780 (Round-1 style 0.75 / 0.72 / 0.77 against 0.68 / 0.60 / 0.68) and on content on two of them (0.87 / 0.87 /
# 0.82 against 0.83 / 0.88 / 0.80), where 0.75 gave more style and less content (never EVAL_SEED; `python
# scripts/muse_dev_checks.py adapters --recipe shapes-round1-head --lambda-a 0.25 0.5 0.75 --images-per-prompt 4
# --seed S`). On the models before, 0.25 had beaten 0, 0.5, 0.75 and 1 on content (seeds 777 and 779).
SAMPLING = {"guidance_scale": 2.0, "lambda_a": 0.5}
# The recipes Muse-mini trains with unless one is named (`training.default_recipe`). It is ~1000x smaller than
# Muse-3B, and the paper's recipes (Adam 3e-5, 1000 steps) hardly move its adapters: Round 1 style 0.19 against 0.49
# with shapes-round1 (development seed 777; `python scripts/muse_dev_checks.py adapters --recipe
# round1|shapes-round1 --images-per-prompt 4`). Its rounds also put the adapter after the transformer layers, where
# it decides texture (not in the paper): Round 1 style 0.70 and 0.75, content 0.82 and 0.89 against shapes-round1's
# 0.49 and 0.54, 0.84 and 0.80 (seeds 777 and 778; `... adapters --recipe R --lambda-a 0.25 --images-per-prompt 4
# --seed S`).
RECIPES = {
    "round1": "shapes-round1-head",
    "round2": "shapes-round2-head",
    "lora": "shapes-lora",
    "full": "shapes-full",
}


def shapes_model_dir() -> Path:
    """Folder of Muse-mini in the aMUSEd layout (transformer/, vqvae/, text_encoder/, tokenizer/, scheduler/)."""
    return WEIGHTS / "muse"


def shapes_clip_dir() -> Path:
    """Folder of the mini CLIP (a ``CLIPModel`` with its ``CLIPTokenizer``), this world's score model."""
    return WEIGHTS / "clip"


def glyph_oracle_path() -> Path:
    """File of the glyph detector's weights (safetensors): is this image the two-adapter experiment's glyph?"""
    return WEIGHTS / "glyph_oracle.safetensors"


def oracle_path() -> Path:
    """File of the oracle classifiers' weights (safetensors)."""
    return WEIGHTS / "oracles.safetensors"


__all__ = [
    "RECIPES",
    "SAMPLING",
    "COLOUR_NAMES",
    "GLYPH",
    "GLYPH_WORDS",
    "HELD_OUT_STYLES",
    "POSITIONS",
    "SEEN_STYLES",
    "SHAPES",
    "SIZES",
    "STYLES",
    "Scenes",
    "caption",
    "glyph_caption",
    "glyph_oracle_path",
    "oracle_path",
    "parse_caption",
    "render",
    "render_batch",
    "render_blobs",
    "render_glyphs",
    "render_prompts",
    "render_strokes",
    "sample_scenes",
    "shapes_clip_dir",
    "shapes_model_dir",
    "stream",
    "vocabulary",
]
