"""``stylecraft demo``: StyleDrop seen working end to end on the shapes world, offline, on a CPU.

One render of a style Muse-mini never saw is the reference. A Round-1 adapter is trained on it, then the same
prompts (other shapes, other colours, in that style) are sampled without and with the adapter. The report puts the
reference, both grids and the oracle / CLIP metrics side by side.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from .evaluation import GUIDANCE, LAMBDA_A, generate, make_task, measure
from .io import make_grid, output_dir, save_png, write_json
from .sampling import SamplingConfig
from .training import load_recipe, train_adapter
from .world import RECIPES

DEMO_STYLE = "neon glow"  # held out of Muse-mini's pretraining
IMAGES_PER_PROMPT = 2
METRICS = [
    ("style_accuracy", "style acc."),
    ("content_accuracy", "content acc."),
    ("shape_accuracy", "shape acc."),
    ("colour_accuracy", "colour acc."),
    ("leakage", "leakage"),
    ("text_score", "CLIP text"),
    ("style_score", "CLIP style"),
]


def run_demo(
    out: str | Path = "runs/demo",
    model: str | None = None,
    style: str = DEMO_STYLE,
    steps: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train a Round-1 adapter on one held-out-style render, sample, measure, and write a report into ``out``."""
    from .api import load
    from .scoring import load_scorer
    from .world.oracles import load_oracles

    started = time.time()
    muse = load(model)
    task = make_task(style)
    oracles, scorer = load_oracles(), load_scorer()
    recipe = load_recipe(RECIPES["round1"], steps=steps)
    sampling = SamplingConfig(steps=12, guidance_scale=GUIDANCE, lambda_a=LAMBDA_A)  # as the eval harness
    with output_dir(out, overwrite=overwrite) as folder:
        save_png(task.reference, folder / "reference.png", {"prompt": task.reference_prompt})
        adapted = train_adapter(
            muse, [task.reference], [task.reference_prompt], recipe, folder / "adapter", progress=progress
        )
        train_seconds = time.time() - started
        results = {}
        for method, kwargs in (("prompt only", {}), ("StyleDrop Round 1", {"model": adapted, "adapter": "adapter"})):
            images, prompts = generate(muse, task.prompts, IMAGES_PER_PROMPT, sampling, **kwargs)
            results[method] = measure(images, prompts, task, oracles, scorer)
            # two prompts per grid row, two seeds each
            ordered = [
                images[j * len(task.prompts) + p] for p in range(len(task.prompts)) for j in range(IMAGES_PER_PROMPT)
            ]
            grid = make_grid([im.resize((128, 128), 0) for im in ordered], columns=2 * IMAGES_PER_PROMPT)
            save_png(grid, folder / f"grid_{method.split()[0].lower()}.png", {"method": method})
        summary = {
            "style": style,
            "reference_prompt": task.reference_prompt,
            "prompts": task.prompts,
            "recipe_name": RECIPES["round1"],
            "recipe": recipe.__dict__,
            "sampling": sampling.__dict__,
            "results": results,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(time.time() - started, 1),
            "model": muse.name,
        }
        write_json(folder / "results.json", summary)
        (folder / "report.md").write_text(_markdown(summary))
        (folder / "report.html").write_text(_html(summary))
    return summary


def _table(summary: dict) -> list[list[str]]:
    rows = [["method"] + [label for _, label in METRICS]]
    for method, metrics in summary["results"].items():
        rows.append([method] + [f"{metrics[k]:.2f}" if k in metrics else "-" for k, _ in METRICS])
    return rows


def _markdown(summary: dict) -> str:
    rows = _table(summary)
    table = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    table += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(
        [
            f"# StyleDrop demo: {summary['style']} style",
            "",
            f"Reference ({summary['reference_prompt']}): ![reference](reference.png)",
            "",
            f"Model `{summary['model']}`; Round-1 adapter (recipe `{summary['recipe_name']}`) trained in "
            f"{summary['train_seconds']} s; "
            f"whole demo {summary['total_seconds']} s. Prompts: other shapes and colours in the same style.",
            "",
            *table,
            "",
            "Accuracies are the shapes world's oracles; leakage = the reference's shape or colour where the prompt "
            "asked for another. Each grid row holds two prompts, two seeds each, in the order listed below.",
            "",
            "| prompt only | StyleDrop Round 1 |",
            "|---|---|",
            "| ![prompt only](grid_prompt.png) | ![StyleDrop](grid_styledrop.png) |",
            "",
            "Prompts: " + "; ".join(summary["prompts"]),
            "",
        ]
    )


def _html(summary: dict) -> str:
    rows = _table(summary)
    cells = "".join(
        "<tr>"
        + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</{'th' if i == 0 else 'td'}>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"""<!doctype html><meta charset="utf-8"><title>stylecraft demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}img{{image-rendering:pixelated}}</style>
<h1>StyleDrop demo: {html.escape(summary["style"])} style</h1>
<p>Reference: <em>{html.escape(summary["reference_prompt"])}</em><br><img src="reference.png" width="128"></p>
<table>{cells}</table>
<p>Round-1 adapter trained in {summary["train_seconds"]} s; whole demo {summary["total_seconds"]} s.</p>
<div style="display:flex;gap:2em"><figure><img src="grid_prompt.png"><figcaption>prompt only</figcaption></figure>
<figure><img src="grid_styledrop.png"><figcaption>StyleDrop Round 1</figcaption></figure></div>
"""


def run_cli(args) -> int:
    summary = run_demo(args.out or "runs/demo", model=args.model, steps=args.steps, overwrite=args.overwrite)
    for row in _table(summary):
        print(" | ".join(row))
    print(f"report: {Path(args.out or 'runs/demo') / 'report.md'}")
    return 0
