"""Train the shapes world's judges (evaluation only): the oracle classifiers and the glyph detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StylecraftError
from . import renderer, space
from .oracles import ATTRIBUTES, Oracles, load_oracles, oracle_accuracy
from .pretrain import EVAL_SEED, Recipe, finish, to_tensor, train_loop


def train_oracles(recipe: Recipe, out: Path, resume: bool) -> None:
    torch.manual_seed(recipe.seed)
    model = Oracles(**recipe.model)
    data = renderer.stream(recipe.batch_size, recipe.seed)
    on_space = space.on_space(recipe.extra)

    def step_fn(step):
        if on_space:  # world v2: all 14 named styles (the style head's classes) and the space's SEEN styles
            batch = space.recipe_batch(recipe.extra, recipe.batch_size, recipe.seed, step, renderer.STYLES)
            images, scenes = batch.images, batch.scenes
        else:
            images, scenes = next(data)
        x = _soften(to_tensor(images), recipe.extra.get("blur_prob", 0.25))
        logits = model(x)
        labels = scenes.labels()
        # the style head names the 14 named styles; a space style (-1) has no class there
        losses = {
            k: F.cross_entropy(logits[k], torch.from_numpy(labels[k]), ignore_index=-1)
            for k in ATTRIBUTES
            if k != "style" or (labels[k] >= 0).any()
        }
        return sum(losses.values()), {k: round(v.item(), 3) for k, v in losses.items()}

    wall, history = train_loop(recipe, out, {"oracles": model}, list(model.parameters()), step_fn, resume)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "oracles.safetensors"))
    oracles = load_oracles(out / "oracles.safetensors")
    metrics = evaluate_oracles(oracles, recipe.eval_images)
    if on_space:
        metrics["space"] = evaluate_oracles_space(oracles, recipe.eval_images)
    finish(out, "oracles", recipe, wall, history, metrics)


def evaluate_oracles_space(oracles: Oracles, n: int) -> dict:
    """Accuracy of shape, colour, size and position on ``n`` fresh renders of each family of the style space (the
    seen styles and every held-out family, which the oracles never saw), and the minimum over held-out families."""
    from .space_eval import family_renders

    result = {}
    for name in (space.SEEN, *space.HELD_OUT_FAMILIES):
        images, scenes, _ = family_renders(name, n, EVAL_SEED)
        labels = {k: v for k, v in scenes.labels().items() if k != "style"}
        result[name] = {a: round(v, 4) for a, v in oracle_accuracy(oracles, images, labels).items()}
    keys = ("shape", "colour", "size", "position")
    result["held_out_min"] = {a: min(result[f][a] for f in space.HELD_OUT_FAMILIES) for a in keys}
    return result


def _soften(x: torch.Tensor, probability: float) -> torch.Tensor:
    """Blur a random ``probability`` share of images a little: oracles must also judge soft generated images."""
    blur = torch.tensor([1.0, 2.0, 1.0])
    blur = (blur[:, None] * blur[None, :] / 16).expand(3, 1, 3, 3)
    soft = torch.rand(len(x)) < probability
    x[soft] = F.conv2d(F.pad(x[soft], (1, 1, 1, 1), mode="replicate"), blur, groups=3).to(x.dtype)  # bf16 autocast
    return x


# ---- glyph oracle -------------------------------------------------------------------------------------------------
def train_glyph_oracle(recipe: Recipe, out: Path, resume: bool) -> None:
    """A glyph-or-not detector: half of each batch glyphs; the other half the eight shapes, shapeless blobs
    (``renderer.render_blobs``) for a share ``extra.blob_fraction`` of it, and loose strokes
    (``renderer.render_strokes``) for a share ``extra.stroke_fraction``; all colours and sizes, and all styles, or
    with ``extra.styles`` "seen" only ``renderer.SEEN_STYLES``: a detector that never saw the held-out styles, to
    judge the glyph drawn in them (issue #30)."""
    from safetensors.torch import save_file

    from .oracles import GlyphOracle, load_glyph_oracle

    fractions = {key: recipe.extra.get(key, 0.0) for key in ("blob_fraction", "stroke_fraction")}
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise StylecraftError(f"extra.{key} must be in [0, 1] (a share of the negatives), got {value}")
    if sum(fractions.values()) > 1.0:
        raise StylecraftError(
            f"extra.blob_fraction + extra.stroke_fraction must be at most 1 (shares of the negatives), got "
            f"{sum(fractions.values())}"
        )
    if recipe.extra.get("styles", "all") not in ("all", "seen"):
        raise StylecraftError(f"extra.styles must be 'all' or 'seen', got {recipe.extra['styles']!r}")
    styles = renderer.SEEN_STYLES if recipe.extra.get("styles") == "seen" else None  # None: every style
    torch.manual_seed(recipe.seed)
    model = GlyphOracle(**recipe.model)
    half = recipe.batch_size // 2

    def step_fn(step):
        glyphs, _ = renderer.render_glyphs(half, seed=[recipe.seed, step, 1], styles=styles)
        blobs, strokes = (round(half * fractions[key]) for key in ("blob_fraction", "stroke_fraction"))
        shapes, _ = renderer.render_batch(half - blobs - strokes, seed=[recipe.seed, step, 0], styles=styles)
        negatives = [shapes]
        if blobs:
            negatives.append(renderer.render_blobs(blobs, seed=[recipe.seed, step, 2], styles=styles))
        if strokes:
            negatives.append(renderer.render_strokes(strokes, seed=[recipe.seed, step, 3], styles=styles))
        x = _soften(to_tensor(np.concatenate([glyphs, *negatives])), recipe.extra.get("blur_prob", 0.25))
        target = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        return loss, {}

    wall, history = train_loop(recipe, out, {"glyph": model}, list(model.parameters()), step_fn, resume)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "glyph_oracle.safetensors"))
    detector = load_glyph_oracle(out / "glyph_oracle.safetensors")
    finish(out, "glyph", recipe, wall, history, evaluate_glyph_oracle(detector, recipe.eval_images))


def evaluate_glyph_oracle(detector, per_style: int) -> dict:
    """Per style: share of fresh glyph renders called glyph, and of fresh shape, blob and stroke renders called
    not-glyph."""
    result = {}
    for k, style in enumerate(renderer.STYLES):
        glyphs, _ = renderer.render_glyphs(per_style, EVAL_SEED + k, styles=(style,))
        shapes, _ = renderer.render_batch(per_style, EVAL_SEED + 100 + k, styles=(style,))
        blobs = renderer.render_blobs(per_style, EVAL_SEED + 200 + k, styles=(style,))
        strokes = renderer.render_strokes(per_style, EVAL_SEED + 300 + k, styles=(style,))
        result[style] = {
            "glyph_recall": round(float(detector.predict(glyphs).mean()), 4),
            "shape_rejection": round(float((~detector.predict(shapes)).mean()), 4),
            "blob_rejection": round(float((~detector.predict(blobs)).mean()), 4),
            "stroke_rejection": round(float((~detector.predict(strokes)).mean()), 4),
        }
    keys = ("glyph_recall", "shape_rejection", "blob_rejection", "stroke_rejection")
    result["min"] = {key: min(result[s][key] for s in renderer.STYLES) for key in keys}
    return result


def evaluate_oracles(oracles: Oracles, per_style: int) -> dict:
    """Accuracy per attribute on ``per_style`` fresh renders of every style (fixed evaluation seed)."""
    result = {}
    for k, style in enumerate(renderer.STYLES):
        images, scenes = renderer.render_batch(per_style, EVAL_SEED + k, styles=(style,))
        result[style] = {a: round(v, 4) for a, v in oracle_accuracy(oracles, images, scenes.labels()).items()}
    result["min"] = {a: min(result[s][a] for s in renderer.STYLES) for a in ATTRIBUTES}
    return result
