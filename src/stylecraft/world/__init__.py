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

# How Muse-mini is sampled and trained unless told otherwise. `world pretrain muse` writes both into the model
# folder's model_index.json ("_stylecraft"), which is what `stylecraft.muse` reads; a test checks the shipped folder
# agrees. Chosen on development seeds (777-780, never the evaluation seed; docs/shapes-experiments.md has the runs):
# - CFG 2: aMUSEd's CFG 10 (λA 0) drew Round-1 style 0.14 and content 0.75, against 0.49 and 0.84 at CFG 2.
# - λA 0.5: it beat 0.25 on Round-1 style on each of seeds 777, 778 and 780 (0.75 / 0.72 / 0.77 against 0.68 / 0.60 /
#   0.68) and on content on two of them; 0.75 gave more style and less content.
SAMPLING = {"guidance_scale": 2.0, "lambda_a": 0.5}
# The paper's recipes (Adam 3e-5, 1000 steps) hardly move the adapters of a model ~1000x smaller than Muse-3B
# (Round 1 style 0.19 against 0.49 with shapes-round1, seed 777). Its rounds also put the adapter after the
# transformer layers, where Muse-mini decides texture (not in the paper): Round 1 style 0.70 and 0.75 against
# shapes-round1's 0.49 and 0.54 (seeds 777 and 778).
RECIPES = {
    "round1": "shapes-round1-head",
    "round2": "shapes-round2-head",
    "lora": "shapes-lora",
    "full": "shapes-full",
    "dreambooth": "shapes-dreambooth",  # stylecraft train --content (docs/two-adapters.md)
}


def shapes_model_dir() -> Path:
    """Folder of Muse-mini in the aMUSEd layout (transformer/, vqvae/, text_encoder/, tokenizer/, scheduler/)."""
    return WEIGHTS / "muse"


def shapes_clip_dir() -> Path:
    """Folder of the mini CLIP (a ``CLIPModel`` with its ``CLIPTokenizer``), this world's score model."""
    return WEIGHTS / "clip"


def glyph_oracle_path(seen_styles_only: bool = False) -> Path:
    """File of the glyph detector's weights (safetensors): is this image the two-adapter experiment's glyph?
    ``seen_styles_only``: the detector trained on the seen styles alone (recipe ``glyph-seen``), which judges the
    glyph in the held-out styles without having seen them (``stylecraft eval-two-adapters``)."""
    return WEIGHTS / ("glyph_oracle_seen.safetensors" if seen_styles_only else "glyph_oracle.safetensors")


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
