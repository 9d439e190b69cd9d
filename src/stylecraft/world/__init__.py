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
    render_glyphs,
    render_prompts,
    sample_scenes,
    stream,
    vocabulary,
)

WEIGHTS = Path(__file__).parent / "weights"


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
    "render_glyphs",
    "render_prompts",
    "sample_scenes",
    "shapes_clip_dir",
    "shapes_model_dir",
    "stream",
    "vocabulary",
]
