"""StyleDrop against InstantStyle on the style space's held-out families: one table, the same references and prompts.

    stylecraft compare-methods --out DIR [--families 3] [--images 22] [--methods all|styledrop|instantstyle]
                               [--muse-model FOLDER]

For each held-out family (``world.space_eval.family_task``): its reference image (a large red circle in a member
style the models never saw) and prompts that ask for other shapes and colours. InstantStyle runs on ``shapes-sd``
with its IP-Adapter (prompts without style words: the style comes from the image); StyleDrop trains on the
reference with the descriptor prompt on Muse-mini and draws the prompts with the descriptor, as its paper does.
Columns: style match (the style judge retrieves the reference's style among 50 held-out styles), content (shape and
colour as asked), leakage (the reference's shape or colour where another was asked), CLIP text score of the
content prompt (the shipped mini CLIP), seconds to the first image (training included) and per image after it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import StylecraftError

REFERENCE_CONTENT = "a large red circle"  # what content subtraction removes: the reference's own content
INSTANTSTYLE_ROWS: dict[str, dict] = {
    "prompt only (shapes-sd)": {"blocks": "all", "scale": 0.0},
    "IP-Adapter, all blocks": {"blocks": "all"},
    "InstantStyle, style blocks": {"blocks": "style"},
    "InstantStyle, style blocks + content subtraction": {"blocks": "style", "content_prompt": REFERENCE_CONTENT},
    "InstantStyle, + subtraction + precise": {"blocks": "style", "content_prompt": REFERENCE_CONTENT, "precise": True},
}
STYLEDROP_ROWS = (
    "prompt only (Muse-mini, descriptor)",
    "StyleDrop Round 1 (Muse-mini)",
    "StyleDrop Round 2, CLIP feedback (Muse-mini)",
)
ROWS = (*INSTANTSTYLE_ROWS, *STYLEDROP_ROWS)
METHODS = {"all": ROWS, "styledrop": STYLEDROP_ROWS, "instantstyle": tuple(INSTANTSTYLE_ROWS)}
KEYS = ("style_match", "style_rank", "content", "leakage", "text_score", "first_image_seconds", "seconds_per_image")


def _pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image.convert("RGB").resize((64, 64))) for image in images])


def _instantstyle_rows(style, task, steps: int, guidance: float) -> dict[str, tuple[list[Image.Image], list[float]]]:
    """Each InstantStyle row's images for ``task`` (one call per prompt, seed = prompt index) and call seconds."""
    reference = Image.fromarray(task.reference)
    embeds = style.encode_style(reference)[0]  # encoded once: every row and prompt reuses it (--style-embeds)
    drawn = {}
    for row, options in INSTANTSTYLE_ROWS.items():
        images, seconds = [], []
        for k, prompt in enumerate(task.prompts(with_style=False)):
            began = time.perf_counter()
            output = style(prompt, style_embeds=embeds, steps=steps, guidance=guidance, seed=k, **options)
            seconds.append(time.perf_counter() - began)
            images += output.images
        drawn[row] = (images, seconds)
    return drawn


def _styledrop_rows(muse, task, folder: Path, config) -> dict[str, tuple[list[Image.Image], list[float]]]:
    """Muse-mini with the descriptor prompt alone (its CFG, no adapter), StyleDrop Round 1 on the reference, and
    Round 2 on its CLIP-picked outputs; seconds: training first."""
    from dataclasses import replace

    from .evaluation import generate
    from .feedback import SHAPES_WORLD_CONTENT, generate_candidates, select, train_round
    from .training import load_recipe, train_adapter
    from .world import RECIPES, space

    descriptor = space.describe(task.style_id)
    prompts = task.prompts(with_style=True)
    began = time.perf_counter()
    images, _ = generate(muse, prompts, 1, replace(config, lambda_a=None))  # Muse CFG alone
    drawing = (time.perf_counter() - began) / len(images)
    drawn = {STYLEDROP_ROWS[0]: (images, [drawing] * len(images))}
    began = time.perf_counter()
    round1 = train_adapter(
        muse,
        [Image.fromarray(task.reference)],
        [f"{REFERENCE_CONTENT} in {descriptor} style"],
        load_recipe(RECIPES["round1"]),
        folder / "round1",
        progress=False,
    )
    trained = time.perf_counter() - began
    began = time.perf_counter()
    images, _ = generate(muse, prompts, 1, config, model=round1, adapter="adapter")
    drawing = (time.perf_counter() - began) / len(images)
    drawn[STYLEDROP_ROWS[1]] = (images, [trained + drawing] + [drawing] * (len(images) - 1))
    began = time.perf_counter()
    round_dir = folder / "round2"
    feedback_prompts = [f"{content} in {descriptor} style" for content in SHAPES_WORLD_CONTENT]
    generate_candidates(muse, folder / "round1", feedback_prompts, round_dir, descriptor, config=config, progress=False)
    round2 = train_round(muse, round_dir, select(round_dir, "clip"), progress=False, adapter_dir=folder / "round2-clip")
    trained += time.perf_counter() - began  # Round 2 costs Round 1, the candidates and the second training
    began = time.perf_counter()
    images, _ = generate(muse, prompts, 1, config, model=round2, adapter="adapter")
    drawing = (time.perf_counter() - began) / len(images)
    drawn[STYLEDROP_ROWS[2]] = (images, [trained + drawing] + [drawing] * (len(images) - 1))
    return drawn


def run_comparison(
    out: str | Path,
    families: int | list[str] = 3,
    images: int = 22,
    sd_model: str | Path | None = None,
    muse_model: str | None = None,
    steps: int = 25,
    guidance: float = 3.0,
    overwrite: bool = False,
    methods: str = "all",
) -> dict:
    """The table for ``families`` (a count of held-out families, in order, or their names), ``images`` prompts each,
    of the rows ``methods`` names ("all", "styledrop": its Table 2 on the families, "instantstyle"); writes
    results.json, table.md and grids/<row>.png (one row of images per family) into ``out``. ``muse_model``: the
    Muse folder StyleDrop trains on (default: the shipped Muse-mini)."""
    from .api import load
    from .evaluation import GUIDANCE, LAMBDA_A
    from .instantstyle import load_instantstyle
    from .io import make_grid, output_dir, save_png, write_json
    from .sampling import SamplingConfig
    from .scoring import load_scorer
    from .world import space
    from .world.space_eval import family_task, load_space_oracles, measure_family
    from .world.style_judge import load_style_judge

    names = list(space.HELD_OUT_FAMILIES)[:families] if isinstance(families, int) else list(families)
    unknown = [name for name in names if name not in space.HELD_OUT_FAMILIES]
    if unknown or not names:
        raise StylecraftError(
            f"unknown held-out famil{'y' if len(unknown) == 1 else 'ies'} {unknown or '(none)'}; "
            f"choose from {', '.join(space.HELD_OUT_FAMILIES)}"
        )
    if images < 1:
        raise StylecraftError(f"--images must be at least 1 (prompts per family), got {images}")
    if methods not in METHODS:
        raise StylecraftError(f"--methods must be one of {', '.join(METHODS)}, got {methods!r}")
    rows = METHODS[methods]
    with output_dir(out, overwrite=overwrite) as folder:
        style = load_instantstyle(sd_model) if set(rows) & set(INSTANTSTYLE_ROWS) else None
        muse = load(muse_model) if set(rows) & set(STYLEDROP_ROWS) else None
        oracles, scorer, judge = load_space_oracles(), load_scorer(), load_style_judge()
        config = SamplingConfig(steps=12, guidance_scale=GUIDANCE, lambda_a=LAMBDA_A)
        per_family, grids = {}, {row: [] for row in rows}
        for name in names:
            task = family_task(name, images)
            drawn = _instantstyle_rows(style, task, steps, guidance) if style else {}
            if muse is not None:
                drawn.update(_styledrop_rows(muse, task, folder / name.replace(" ", "-"), config))
            contents = task.prompts(with_style=False)
            per_family[name] = {"style_id": task.style_id, "descriptor": space.describe(task.style_id), "rows": {}}
            for row, (pictures, seconds) in drawn.items():
                metrics = measure_family(_pixels(pictures), task, oracles, judge)  # candidates embedded once
                metrics["text_score"] = round(float(scorer.text_scores(pictures, contents).mean()), 4)
                metrics["first_image_seconds"] = round(seconds[0], 2)
                metrics["seconds_per_image"] = round(float(np.mean(seconds[1:] or seconds)), 3)
                per_family[name]["rows"][row] = metrics
                grids[row].append([Image.fromarray(task.reference), *pictures[:8]])
        mean = {
            row: {key: round(float(np.mean([per_family[f]["rows"][row][key] for f in names])), 4) for key in KEYS}
            for row in rows
        }
        results = {
            "families": names,
            "images_per_family": images,
            "methods": methods,
            "instantstyle": style and {"model": style.sources.get("model"), "steps": steps, "guidance": guidance},
            "styledrop": muse and {"model": muse.name, "guidance": GUIDANCE, "lambda_a": LAMBDA_A, "steps": 12},
            "per_family": per_family,
            "mean": mean,
        }
        for row, rows in grids.items():
            tiles = [tile for line in rows for tile in line]
            save_png(make_grid(tiles, columns=len(rows[0])), folder / "grids" / f"{_slug(row)}.png", {"row": row})
        write_json(folder / "results.json", results)
        (folder / "table.md").write_text(comparison_markdown(results))
    return results


def _slug(row: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in row.lower()).strip("-").replace("--", "-")


def comparison_markdown(results: dict) -> str:
    n = len(results["families"]) * results["images_per_family"]
    lines = [
        f"Held-out families: {', '.join(results['families'])}; {results['images_per_family']} prompts each "
        f"({n} images per row). Style match: retrieval of the reference's style among 50 held-out styles (chance "
        "0.02); style rank: the share of the 49 other styles the reference's is nearer than (chance 0.50); content: "
        "shape and colour as asked; leakage: the reference's shape or colour instead.",
        "",
        "| method | style match | style rank | content | leakage | CLIP text | s to first image | s per image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, m in results["mean"].items():
        lines.append(
            f"| {row} | {m['style_match']:.2f} | {m['style_rank']:.2f} | {m['content']:.2f} | {m['leakage']:.2f} | "
            f"{m['text_score']:.3f} | {m['first_image_seconds']:.1f} | {m['seconds_per_image']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run_cli(args) -> int:
    results = run_comparison(
        args.out,
        families=args.family or args.families,
        images=args.images,
        sd_model=args.model,
        muse_model=args.muse_model,
        methods=args.methods,
        steps=args.steps,
        guidance=args.guidance,
        overwrite=args.overwrite,
    )
    print(comparison_markdown(results))
    return 0


def configure(parser) -> None:
    """Options of ``stylecraft compare-methods``."""
    parser.add_argument("--families", type=int, default=3, help="how many held-out families, in order (default 3)")
    parser.add_argument("--family", action="append", default=None, help="a held-out family by name (repeatable)")
    parser.add_argument("--images", type=int, default=22, help="prompts (images) per family and row (default 22)")
    parser.add_argument(
        "--methods",
        default="all",
        help="the rows: all (default), styledrop (prompt only, Round 1, Round 2: StyleDrop's Table 2 on held-out "
        "families) or instantstyle",
    )
    parser.add_argument("--model", default=None, help="the SD model for InstantStyle (default: shapes-sd)")
    parser.add_argument("--muse-model", default=None, help="the Muse folder StyleDrop trains on (default: Muse-mini)")
    parser.add_argument("--steps", type=int, default=25, help="InstantStyle denoising steps (default 25)")
    parser.add_argument("--guidance", type=float, default=3.0, help="InstantStyle CFG scale (default 3)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier stylecraft folder at --out")
