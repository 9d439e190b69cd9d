"""Can a content adapter learn a new object? DreamBooth capacities measured in the shapes world (issue #30, step 1).

Each candidate recipe trains a content adapter on ``GLYPH_RENDERS`` renders of the glyph (a shape no model saw),
captioned "a large orange sks glyph in flat color style", once without and once with DreamBooth's class-prior
preservation (``dreambooth.py``; class prompt: the same caption without the rare token, "a large orange glyph in
flat color style"; ``NUM_CLASS_IMAGES`` prior images, drawn once and shared by every run). Each adapter then draws,
with fixed seeds, at the model's sampling settings (CFG; StyleDrop guidance Eq. 4 with λA for an adapter; a full
fine-tune has no base left to guide against, so plain CFG):

- **own prompt**: the training caption; glyph rate by the glyph detector (the issue's target: ≥ 0.90);
- **held-out style**: "a large orange sks glyph in neon glow style", a style the base never saw; glyph rate;
- **other prompts**: the 8 known shapes in 8 colours (``OTHER_PROMPTS``); the oracles' shape accuracy, against the
  base without an adapter on the same prompts and seeds (target: within 5 points), and how often the glyph shows.

The judges (oracles, glyph detector) only evaluate, never train or select. Writes results.json, table.md and grid.png.
"""

from __future__ import annotations

import json
import re
import sys
import time

import numpy as np
from PIL import Image

from .evaluation import EVAL_SEED, GLYPH_COLOUR, GLYPH_RENDERS, SE_NOTE, markdown_table, standard_errors
from .world import COLOUR_NAMES, SHAPES, caption, glyph_caption, parse_caption, render_glyphs, render_prompts

CANDIDATES = ("shapes-dreambooth", "shapes-dreambooth-d32", "shapes-dreambooth-lora", "shapes-dreambooth-full")
LAMBDA_PRIORS = (0.0, 1.0)  # without and with class-prior preservation (DreamBooth's λ: 1)
NUM_CLASS_IMAGES = 64  # prior images of the class prompt, shared by every run with a prior term
TRAIN_STYLE = "flat color"  # the style of the object's renders, named in their caption
HELD_OUT_STYLE = "neon glow"  # where the two-adapter composition broke before (glyph 0.00)
# the 8 known shapes, each in two colours (every colour twice), in the renders' style: where an adapter that draws
# the glyph whatever the prompt says would show first
OTHER_PROMPTS = [
    caption(s, COLOUR_NAMES[(i + 4 * k) % 8], style=TRAIN_STYLE) for k in (0, 1) for i, s in enumerate(SHAPES)
]
CELLS = ("own prompt", "held-out style", "other prompts")
BASE_ROW = "base model, no adapter"


def measure_cell(images: list[Image.Image], prompts: list[str], oracles, detector) -> dict:
    """Glyph rate (detector); for prompts of the known shapes also the oracles' shape accuracy. ± standard errors."""
    array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    metrics: dict = {"glyph_rate": float(detector.predict(array).mean()), "num_images": len(images)}
    if "sks" not in prompts[0]:
        wanted = np.array([SHAPES.index(parse_caption(p)["shape"]) for p in prompts])
        metrics["shape_accuracy"] = float((oracles.predict(array)["shape"] == wanted).mean())
    return {**metrics, **standard_errors(metrics, ("glyph_rate", "shape_accuracy"))}


def run_content_table(
    out,
    model: str | None = None,
    recipes: tuple[str, ...] = CANDIDATES,
    lambda_priors: tuple[float, ...] = LAMBDA_PRIORS,
    num_images: int = 32,
    steps: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Train every recipe × λ_prior content adapter on the glyph and measure its three cells (module docstring);
    ``progress``: print each row's numbers to stderr as it is done (a full run takes many minutes on a CPU)."""
    from .api import load, sample
    from .dreambooth import class_prior_tokens, train_dreambooth
    from .errors import StylecraftError
    from .io import make_grid, output_dir, save_png, to_pil_images, write_json
    from .sampling import SamplingConfig
    from .training import load_recipe
    from .world.oracles import load_glyph_oracle, load_oracles

    if num_images < len(OTHER_PROMPTS):
        raise StylecraftError(
            f"--num-images must be at least {len(OTHER_PROMPTS)} (one per other prompt), got {num_images}"
        )
    own = glyph_caption(GLYPH_COLOUR, style=TRAIN_STYLE)
    class_prompt = own.replace("sks ", "")  # DreamBooth's class prompt: the caption without the rare token
    prompts = {"own prompt": [own], "held-out style": [glyph_caption(GLYPH_COLOUR, style=HELD_OUT_STYLE)]}
    prompts["other prompts"] = OTHER_PROMPTS
    configs = {  # checked before any training: an unknown recipe or a bad λ_prior is refused at once
        (recipe, lam): load_recipe(
            recipe, steps=steps, class_prompt=class_prompt, num_class_images=NUM_CLASS_IMAGES, lambda_prior=lam
        )
        for recipe in recipes
        for lam in lambda_priors
    }
    oracles, detector = load_oracles(), load_glyph_oracle()
    glyphs, _ = render_glyphs(GLYPH_RENDERS, seed=0, colour=GLYPH_COLOUR, size="large", styles=(TRAIN_STYLE,))
    inputs = [Image.fromarray(a) for a in glyphs]  # the object's training renders

    def draw(muse, cell: str, adapter=None) -> list[Image.Image]:
        texts = prompts[cell]
        config = SamplingConfig(steps=12, guidance_scale=muse.sampling_defaults["guidance_scale"])
        return sample(
            muse,
            texts,
            adapter=adapter,
            config=config,
            num_images=num_images // len(texts),
            seed=EVAL_SEED,
            progress=False,
        )  # an adapter samples with the model's λA (Eq. 4); a full fine-tune with plain CFG

    def measure(images: list[Image.Image], cell: str) -> dict:
        texts = prompts[cell]
        return measure_cell(images, [texts[i % len(texts)] for i in range(len(images))], oracles, detector)

    def real_images(cell: str) -> list[Image.Image]:  # what the judges score on renders: every row's ceiling
        if cell == "other prompts":
            arrays = render_prompts(OTHER_PROMPTS * (num_images // len(OTHER_PROMPTS)), seed=EVAL_SEED)
        else:
            style = TRAIN_STYLE if cell == "own prompt" else HELD_OUT_STYLE
            arrays = render_glyphs(num_images, seed=EVAL_SEED, colour=GLYPH_COLOUR, size="large", styles=(style,))[0]
        return [Image.fromarray(a) for a in arrays]

    results: dict = {
        "model": None,
        "prompts": prompts,
        "class_prompt": class_prompt,
        "num_class_images": NUM_CLASS_IMAGES,
        "content_images": GLYPH_RENDERS,
        "num_images": num_images,
        "eval_seed": EVAL_SEED,
        "rows": {"renders (judges' ceiling)": {cell: measure(real_images(cell), cell) for cell in CELLS}},
    }
    with output_dir(out, overwrite=overwrite) as folder:
        base = load(model)
        results["model"], results["guidance"] = base.name, base.sampling_defaults["guidance_scale"]
        results["lambda_a"] = base.sampling_defaults["lambda_a"]
        prior = None
        if any(lam > 0 for lam in lambda_priors):
            prior = class_prior_tokens(base, class_prompt, NUM_CLASS_IMAGES, seed=0)
        drawn = {cell: draw(base, cell) for cell in CELLS}
        results["rows"][BASE_ROW] = {cell: measure(images, cell) for cell, images in drawn.items()}
        grid_rows = [[*inputs, *(to_pil_images(base.decode_tokens(prior[:8])) if prior is not None else [])]]
        grid_rows.append([im for cell in CELLS for im in drawn[cell][:4]])
        for (recipe, lam), config in configs.items():
            name = f"{recipe}, λ_prior {lam:g}"
            adapter = folder / re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")
            started = time.time()
            trained = train_dreambooth(
                load(model), inputs, [own] * GLYPH_RENDERS, config, adapter, progress=False, prior_tokens=prior
            )
            row = {"train_seconds": round(time.time() - started, 1)}
            row["trainable_parameters"] = trained.configs["adapter"].training["trainable_parameters"]
            # each cell on a freshly loaded base: a full fine-tune loads its weights into the base it samples with
            drawn = {cell: draw(load(model), cell, adapter) for cell in CELLS}
            row.update({cell: measure(images, cell) for cell, images in drawn.items()})
            results["rows"][name] = row
            if progress:
                numbers = ", ".join(f"{cell} {json.dumps(row[cell])}" for cell in CELLS)
                print(f"{name} ({row['train_seconds']:.0f} s): {numbers}", file=sys.stderr, flush=True)
            grid_rows.append([im for cell in CELLS for im in drawn[cell][:4]])
        width = max(len(row) for row in grid_rows)
        blank = Image.new("RGB", (64, 64), "white")
        cells = [im.resize((96, 96), 0) for row in grid_rows for im in [*row, *[blank] * (width - len(row))]]
        save_png(
            make_grid(cells, columns=width),
            folder / "grid.png",
            {"rows": ["inputs", BASE_ROW, *list(results["rows"])[2:]]},
        )
        write_json(folder / "results.json", results)
        (folder / "table.md").write_text(content_markdown(results))
    return results


def content_markdown(results: dict) -> str:
    """One table: per row, the glyph rate on its own prompt and in the held-out style, and other prompts' shapes."""
    base = results["rows"][BASE_ROW]["other prompts"]["shape_accuracy"]
    flat = {}
    for name, row in results["rows"].items():
        other = row["other prompts"]
        flat[name] = {
            "own": row["own prompt"]["glyph_rate"],
            "own_se": row["own prompt"]["glyph_rate_se"],
            "held_out": row["held-out style"]["glyph_rate"],
            "held_out_se": row["held-out style"]["glyph_rate_se"],
            "shape": other["shape_accuracy"],
            "shape_se": other["shape_accuracy_se"],
            "change": 100 * (other["shape_accuracy"] - base),
            "other_glyph": other["glyph_rate"],
            "train_seconds": row.get("train_seconds", 0),
            "trainable_parameters": row.get("trainable_parameters", 0),
        }
    columns = [
        ("own", "glyph, own prompt ↑", "{:.2f}"),
        ("held_out", f"glyph, {HELD_OUT_STYLE} ↑", "{:.2f}"),
        ("shape", "other prompts: shape acc. ↑", "{:.2f}"),
        ("change", "vs base (points)", "{:+.0f}"),
        ("other_glyph", "other prompts: glyph ↓", "{:.2f}"),
        ("train_seconds", "train s", "{:.0f}"),
        ("trainable_parameters", "trainable params", "{:,.0f}"),
    ]
    p = results["prompts"]
    lines = [
        f"# Content adapters on a new object (model `{results['model']}`)",
        "",
        f"Trained on {results['content_images']} renders of `{p['own prompt'][0]}`; class prompt (DreamBooth's prior, "
        f"{results['num_class_images']} images of the frozen base) `{results['class_prompt']}`. Own prompt: the "
        f"training caption; {HELD_OUT_STYLE}: `{p['held-out style'][0]}`; other prompts: {len(p['other prompts'])} "
        f"prompts of the 8 known shapes (e.g. `{p['other prompts'][0]}`). {results['num_images']} images per cell, "
        f"seed {results['eval_seed']}, CFG {results['guidance']}, λA {results['lambda_a']} for adapters (a full "
        f"fine-tune: plain CFG). Targets: own ≥ 0.90, other prompts within 5 points of the base. {SE_NOTE} "
        "Grid: grid.png (first row: the training renders, then prior images; then per row 4 images of each cell).",
        "",
        *markdown_table(flat, columns),
    ]
    return "\n".join(lines) + "\n"


def run_cli(args) -> int:
    results = run_content_table(
        args.out,
        model=args.model,
        recipes=tuple(args.recipe or CANDIDATES),
        lambda_priors=tuple(LAMBDA_PRIORS if args.lambda_prior is None else args.lambda_prior),
        num_images=args.num_images,
        steps=args.steps,
        overwrite=args.overwrite,
        progress=True,
    )
    print(content_markdown(results))
    return 0
