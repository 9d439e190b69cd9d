"""Measuring StyleDrop in the shapes world, against ground truth (the layout of StyleDrop's Table 2).

A *task* is one held-out style: a single reference render ("a large red circle in neon glow style") to train on,
and evaluation prompts over shapes × colours that differ from the reference's. Generated images are judged by
the world's oracles (style, shape, colour classifiers that never train or select anything) and by the mini CLIP:

- style accuracy: the oracle sees the reference's style;
- shape / colour / content accuracy: the oracle sees the prompt's shape / colour / both;
- content leakage: the oracle sees the reference's shape or colour where the prompt asked for another;
- CLIP text score (image vs prompt) and style score (image vs reference), cosine similarities.

Evaluation seeds are fixed and disjoint from training seeds (``EVAL_SEED``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .errors import StylecraftError
from .world import COLOUR_NAMES, RECIPES, SAMPLING, SHAPES, STYLES, caption, parse_caption, render_prompts

EVAL_SEED = 1_000_003  # sampling seeds of evaluation runs; training uses small seeds


@dataclass
class StyleTask:
    """One StyleDrop experiment: a reference image of a style, and prompts to draw in it."""

    style: str
    reference_prompt: str
    reference: Image.Image
    prompts: list[str]

    @property
    def reference_content(self) -> tuple[str, str]:
        parsed = parse_caption(self.reference_prompt)
        return parsed["shape"], parsed["colour"]


def make_task(style: str, shape: str = "circle", colour: str = "red", num_prompts: int = 8, seed: int = 0) -> StyleTask:
    """A task for ``style``: reference "a large {colour} {shape} in {style} style" rendered with ``seed``, and
    ``num_prompts`` prompts whose shape AND colour both differ from the reference (so leakage is measurable)."""
    if style not in STYLES:
        raise StylecraftError(f"unknown style {style!r}; pick one of the world's styles: {', '.join(STYLES)}")
    reference_prompt = caption(shape, colour, "large", style=style)
    reference = Image.fromarray(render_prompts([reference_prompt], seed=seed)[0])
    shapes = [s for s in SHAPES if s != shape]
    colours = [c for c in COLOUR_NAMES if c != colour]
    # a Latin-square walk over (shape, colour) pairs: every shape and colour appears, none equals the reference's
    pairs = [(shapes[i % len(shapes)], colours[(i * 3 + i // len(shapes)) % len(colours)]) for i in range(num_prompts)]
    prompts = [caption(s, c, "large", style=style) for s, c in pairs]
    return StyleTask(style, reference_prompt, reference, prompts)


def measure(images: list[Image.Image], prompts: list[str], task: StyleTask, oracles, scorer=None) -> dict:
    """Oracle and CLIP metrics of ``images`` (image i drawn for ``prompts[i]``) against ``task``."""
    from .world.oracles import ATTRIBUTES

    array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    predicted = oracles.predict(array)
    wanted = [parse_caption(p) for p in prompts]
    want_shape = np.array([SHAPES.index(w["shape"]) for w in wanted])
    want_colour = np.array([COLOUR_NAMES.index(w["colour"]) for w in wanted])
    ref_shape, ref_colour = SHAPES.index(task.reference_content[0]), COLOUR_NAMES.index(task.reference_content[1])
    shape_ok = predicted["shape"] == want_shape
    colour_ok = predicted["colour"] == want_colour
    # leakage: the reference's shape (or colour) appears where the prompt asked for a different one
    leak = ((predicted["shape"] == ref_shape) & (want_shape != ref_shape)) | (
        (predicted["colour"] == ref_colour) & (want_colour != ref_colour)
    )
    style_ok = predicted["style"] == ATTRIBUTES["style"].index(task.style)
    metrics = {
        "style_accuracy": float(style_ok.mean()),
        "shape_accuracy": float(shape_ok.mean()),
        "colour_accuracy": float(colour_ok.mean()),
        "content_accuracy": float((shape_ok & colour_ok).mean()),
        "all_correct": float((style_ok & shape_ok & colour_ok).mean()),  # style, shape and colour all as asked
        "leakage": float(leak.mean()),
        "num_images": len(images),
    }
    metrics.update(standard_errors(metrics))
    if scorer is not None:
        metrics["text_score"] = float(scorer.text_scores(images, prompts).mean())
        metrics["style_score"] = float(scorer.style_scores(images, task.reference).mean())
    return metrics


SE_NOTE = "± is a rate's standard error over its images (binomial: other sampling seeds, the same prompts)."
RATES = ("style_accuracy", "shape_accuracy", "colour_accuracy", "content_accuracy", "all_correct", "leakage")


def standard_errors(metrics: dict, rates: tuple[str, ...] = RATES) -> dict:
    """``{rate}_se``: the binomial standard error sqrt(p (1 - p) / n) of each rate in ``metrics`` over its
    ``num_images`` images: how far the rate could move with other sampling seeds, for this prompt set."""
    n = metrics["num_images"]
    return {f"{key}_se": float(np.sqrt(metrics[key] * (1 - metrics[key]) / n)) for key in rates if key in metrics}


def generate(
    muse, prompts: list[str], num_images: int, config, model=None, adapter: str | None = None, seed: int = EVAL_SEED
) -> tuple[list[Image.Image], list[str]]:
    """``num_images`` images per prompt with a fixed seed; returns (images, the prompt of each image)."""
    from .io import to_pil_images
    from .sampling import sample_images

    images = sample_images(
        muse,
        prompts,
        config,
        model=model,
        adapter=adapter,
        num_images_per_prompt=num_images,
        generator=torch.Generator("cpu").manual_seed(seed),
        progress=False,
    )
    return to_pil_images(images), [prompts[i % len(prompts)] for i in range(len(prompts) * num_images)]


# ---- the Table-2 harness ---------------------------------------------------------------------------------------
# method -> training recipe (None: the prompt-only base model). Adapters sample with StyleDrop guidance (Eq. 4);
# the prompt-only and full fine-tuning rows have no base/adapter pair, so they sample with Muse CFG (Eq. 1).
METHODS: dict[str, str | None] = {
    "prompt only": None,
    "StyleDrop Round 1": "shapes-round1",  # moved copies of the reference (shift 1), chosen on development seeds
    # not in the paper: the same adapter also after the transformer layers (the shapes model's default since then)
    "StyleDrop Round 1, also after the layers": "shapes-round1-head",
    "StyleDrop Round 1, unshifted": "shapes-round1-unshifted",  # the reference alone, as in the paper
    "LoRA (aMUSEd recipe)": "shapes-lora",
    # not in the paper: LoRA after the transformer layers, where the texture codes are decided (the recipe says why)
    "LoRA on the up block and head": "shapes-head-lora",
    "LoRA on the head and layer outputs": "shapes-wide-lora",  # the same, plus the paper adapter's sites
    "full fine-tuning": "shapes-full",
}
# Muse CFG scale of every row (λB = 1) and StyleDrop style guidance of the adapter rows: the shapes model's own
# sampling defaults, so `stylecraft sample` draws as the tables measure (how they were chosen: world.SAMPLING)
GUIDANCE = SAMPLING["guidance_scale"]
LAMBDA_A = SAMPLING["lambda_a"]


def evaluate_method(
    model_name: str | None,
    task: StyleTask,
    method: str,
    folder,
    oracles,
    scorer,
    num_images: int,
    steps: int | None = None,
    progress: bool = False,
) -> tuple[dict, list[Image.Image]]:
    """Train ``method`` on the task's reference (into ``folder``), sample the task's prompts, measure.

    Each method starts from a freshly loaded base model, so no adapter or fine-tune leaks into the next row.
    """
    import time

    from .api import load
    from .sampling import SamplingConfig
    from .training import load_recipe, train_adapter

    recipe_name = METHODS[method]
    muse = load(model_name)
    model, adapter, trainable, seconds = None, None, 0, 0.0
    config = SamplingConfig(steps=12, guidance_scale=GUIDANCE)
    if recipe_name is not None:
        recipe = load_recipe(recipe_name, steps=steps)
        started = time.time()
        model = train_adapter(muse, [task.reference], [task.reference_prompt], recipe, folder, progress=progress)
        seconds = time.time() - started
        trainable = model.configs["adapter"].training["trainable_parameters"]
        if recipe.adapter_type == "full":
            model = None  # the fine-tuned weights are muse.transformer's own now: plain CFG
        else:
            adapter, config.lambda_a = "adapter", LAMBDA_A
    images, prompts = generate(muse, task.prompts, num_images, config, model=model, adapter=adapter)
    metrics = measure(images, prompts, task, oracles, scorer)
    metrics.update(train_seconds=round(seconds, 1), trainable_parameters=trainable)
    return metrics, images


def run_table(
    out,
    model: str | None = None,
    styles: tuple[str, ...] | None = None,
    methods: list[str] | None = None,
    num_images: int = 16,
    steps: int | None = None,
    overwrite: bool = False,
) -> dict:
    """StyleDrop's Table 2 in the shapes world: every held-out style × method; JSON + markdown + grids in ``out``."""
    from .api import load
    from .io import make_grid, output_dir, save_png, write_json
    from .scoring import load_scorer
    from .world import HELD_OUT_STYLES
    from .world.oracles import load_oracles

    styles = tuple(styles or HELD_OUT_STYLES)
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; choose from {list(METHODS)}")
    muse = load(model)
    oracles, scorer = load_oracles(), load_scorer()
    results: dict = {
        "model": muse.name,
        "num_images": num_images,
        "guidance": GUIDANCE,
        "lambda_a": LAMBDA_A,
        "eval_seed": EVAL_SEED,
        "styles": {},
    }
    with output_dir(out, overwrite=overwrite) as folder:
        for style in styles:
            task = make_task(style)
            results["styles"][style] = {"reference": task.reference_prompt, "prompts": task.prompts, "methods": {}}
            rows = []
            for method in methods:
                slug = re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")
                metrics, images = evaluate_method(
                    model, task, method, folder / style.replace(" ", "-") / slug, oracles, scorer, num_images, steps
                )
                results["styles"][style]["methods"][method] = metrics
                rows.append([task.reference] + images[: len(task.prompts)])
            grid = make_grid([im.resize((96, 96), 0) for row in rows for im in row], columns=len(rows[0]))
            save_png(grid, folder / f"grid_{style.replace(' ', '-')}.png", {"rows": methods})
        results["mean"] = mean_over_styles(results["styles"], "methods")
        write_json(folder / "results.json", results)
        (folder / "table.md").write_text(table_markdown(results))
    return results


def mean_over_styles(blocks: dict, section: str, keys: tuple[str, ...] | None = None) -> dict:
    """For each row of ``section`` (e.g. "methods") in the per-style ``blocks``, the mean of each metric over the
    styles (``keys``; default: every metric of the first style's row)."""
    first = next(iter(blocks.values()))[section]
    means = {}
    for row, metrics in first.items():
        chosen = [k for k in keys or metrics if not k.endswith("_se")]
        values = {k: [block[section][row][k] for block in blocks.values()] for k in chosen}
        means[row] = {k: float(np.mean(v)) for k, v in values.items()}
        for k in chosen:  # the standard error of a mean of independent styles: sqrt(sum of squares) / count
            if f"{k}_se" in metrics:
                errors = np.array([block[section][row][f"{k}_se"] for block in blocks.values()])
                means[row][f"{k}_se"] = float(np.sqrt((errors**2).sum()) / len(errors))
    return means


TABLE_COLUMNS = [
    ("style_accuracy", "style acc. ↑", "{:.2f}"),
    ("shape_accuracy", "shape acc. ↑", "{:.2f}"),
    ("colour_accuracy", "colour acc. ↑", "{:.2f}"),
    ("leakage", "leakage ↓", "{:.2f}"),
    ("text_score", "CLIP text ↑", "{:.3f}"),
    ("style_score", "CLIP style ↑", "{:.3f}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("trainable_parameters", "trainable params", "{:,.0f}"),
]


def markdown_table(per_method: dict, columns: list[tuple[str, str, str]]) -> list[str]:
    """Lines of a markdown table: one row per method, ``columns`` = (key, label, format)."""
    lines = ["| method | " + " | ".join(label for _, label, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method, metrics in per_method.items():
        cells = [
            fmt.format(metrics[key]) + (f" ± {fmt.format(metrics[key + '_se'])}" if key + "_se" in metrics else "")
            for key, _, fmt in columns
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def table_markdown(results: dict) -> str:
    """Mean over styles per method, then one table per style."""
    intro = [
        f"# Shapes world, StyleDrop Table 2 layout (model `{results['model']}`)",
        "",
        f"{results['num_images']} images per prompt, seed {results['eval_seed']}, CFG {results['guidance']}, "
        f"λA {results['lambda_a']} for adapters. {SE_NOTE}",
    ]
    return report_markdown(results, TABLE_COLUMNS, intro, per_style=lambda style: f"![grid](grid_{style}.png)")


def report_markdown(results: dict, columns, intro: list[str], after_mean: str = "", per_style=None) -> str:
    """Intro, the mean-over-styles table, then one table per style (each optionally followed by a line)."""
    lines = [*intro, "", "## Mean over held-out styles", "", *markdown_table(results["mean"], columns), ""]
    lines += [after_mean, ""] if after_mean else []
    for style, block in results["styles"].items():
        lines += [f"## {style} (reference: {block['reference']})", "", *markdown_table(block["methods"], columns), ""]
        if per_style is not None:
            lines += [per_style(style.replace(" ", "-")), ""]
    return "\n".join(lines)


def run_cli(args) -> int:
    results = run_table(
        args.out,
        model=args.model,
        styles=args.style,
        methods=args.method,
        num_images=args.num_images,
        steps=args.steps,
        overwrite=args.overwrite,
    )
    print(table_markdown({**results, "styles": {}}))
    return 0


# ---- feedback rounds (StyleDrop §3.3) in the shapes world -----------------------------------------------------
LAMBDA_A_SWEEP = (0.0, 0.25, 0.5, 1.0, 2.0)
SWEEP_IMAGES = 8  # images per prompt at each λA of the sweep (at most the table's own count)
FEEDBACK_ROWS = ("Round 1", "Round 2 CLIP feedback", "Round 2 random", "Round 2 oracle-picked (human stand-in)")


TRAINING_SET_COLUMNS = [  # the oracles on Round 2's picks (its training set)
    ("style_accuracy", "style acc.", "{:.2f}"),
    ("content_accuracy", "content acc.", "{:.2f}"),
    ("all_correct", "style and content right", "{:.2f}"),
    ("leakage", "leakage", "{:.2f}"),
]


def judge_candidates(round_dir, files: list[str] | None, task: StyleTask, oracles) -> dict:
    """Oracle metrics of a round's candidates ``files`` (None: all of them), each against its own prompt."""
    from .feedback import read_round

    _, scores = read_round(round_dir)
    files = sorted(scores) if files is None else files
    images = [Image.open(f"{round_dir}/candidates/{f}").convert("RGB") for f in files]
    metrics = measure(images, [scores[f]["prompt"] for f in files], task, oracles)
    return {k: v for k, v in metrics.items() if not k.endswith("_se")}  # the whole set, not a sample of it


def oracle_pick(round_dir, task: StyleTask, oracles) -> list[str]:
    """Per prompt, the candidate the oracles judge right (content and style; best CLIP text score among those);
    a prompt with no right candidate gets no pick, as a careful person would leave it (if no prompt has one, the
    best text score per prompt, so that Round 2 has something to train on).

    Evaluation only: a stand-in upper bound for a careful person's picks, never used by the product.
    """
    from .feedback import read_round

    settings, scores = read_round(round_dir)
    files = sorted(scores)
    array = np.stack([np.asarray(Image.open(round_dir / "candidates" / f).convert("RGB")) for f in files])
    predicted = oracles.predict(array)
    from .world.oracles import ATTRIBUTES

    style_id = ATTRIBUTES["style"].index(task.style)

    def text_score(i: int) -> float:
        return scores[files[i]]["text_score"]

    picks, fallback = [], []
    for p, prompt in enumerate(settings["prompts"]):
        wanted = parse_caption(prompt)
        candidates = [i for i, f in enumerate(files) if scores[f]["prompt_index"] == p]
        right = [
            i
            for i in candidates
            if predicted["style"][i] == style_id
            and predicted["shape"][i] == SHAPES.index(wanted["shape"])
            and predicted["colour"][i] == COLOUR_NAMES.index(wanted["colour"])
        ]
        if right:
            picks.append(files[max(right, key=text_score)])
        fallback.append(files[max(candidates, key=text_score)])
    return picks or fallback


def run_feedback_table(
    out,
    model: str | None = None,
    styles: tuple[str, ...] | None = None,
    per_prompt: int = 8,
    num_images: int = 16,
    round1_steps: int | None = None,
    round2_steps: int | None = None,
    overwrite: bool = False,
    repeats: int = 1,
) -> dict:
    """Round 1 vs Round 2 with CLIP / random / oracle-picked feedback, per held-out style; JSON + markdown.

    ``repeats`` > 1 runs each Round 2 again on candidates drawn with other seeds (so other picks): its rows pool the
    images of every repeat, and ``repeats`` in each style's block keeps each repeat's picks and metrics."""
    from .api import load
    from .feedback import SHAPES_WORLD_CONTENT, generate_candidates, select, train_round
    from .io import output_dir, write_json
    from .sampling import SamplingConfig
    from .scoring import load_scorer
    from .training import load_recipe, train_adapter
    from .world import HELD_OUT_STYLES
    from .world.oracles import load_oracles

    if repeats < 1:
        raise StylecraftError(f"--repeats must be at least 1, got {repeats}")
    styles = tuple(styles or HELD_OUT_STYLES)
    muse = load(model)
    oracles, scorer = load_oracles(), load_scorer()
    config = SamplingConfig(steps=12, guidance_scale=GUIDANCE, lambda_a=LAMBDA_A)
    results: dict = {
        "model": muse.name,
        "num_images": num_images,
        "per_prompt": per_prompt,
        "repeats": repeats,
        "recipes": {"round1": RECIPES["round1"], "round2": RECIPES["round2"]},
        "guidance": GUIDANCE,
        "lambda_a": LAMBDA_A,
        "eval_seed": EVAL_SEED,
        "styles": {},
    }
    with output_dir(out, overwrite=overwrite) as folder:
        for style in styles:
            task = make_task(style)
            base = folder / style.replace(" ", "-")
            round1 = train_adapter(
                muse,
                [task.reference],
                [task.reference_prompt],
                load_recipe(RECIPES["round1"], steps=round1_steps),
                base / "round1",
                progress=False,
            )
            adapters = {"Round 1": (round1, base / "round1")}
            prompts = [f"{content} in {style} style" for content in SHAPES_WORLD_CONTENT]
            drawn = {"Round 1": generate(muse, task.prompts, num_images, config, model=round1, adapter="adapter")}
            runs = []  # per repeat: its picks, what they are, and each Round 2's metrics
            for repeat in range(repeats):  # repeat r: candidates drawn with seed r, so other picks
                suffix = f"-seed{repeat}" if repeat else ""
                round_dir = base / f"round2{suffix}"
                generate_candidates(
                    muse,
                    base / "round1",
                    prompts,
                    round_dir,
                    style,
                    per_prompt=per_prompt,
                    seed=repeat,
                    config=config,
                    progress=False,
                )
                picks = {
                    "Round 2 CLIP feedback": select(round_dir, "clip"),
                    "Round 2 random": select(round_dir, "random"),
                    "Round 2 oracle-picked (human stand-in)": oracle_pick(round_dir, task, oracles),
                }
                run = {
                    "picks": picks,
                    # what each Round 2 trained on, judged by the oracles (and every candidate, for scale)
                    "training_sets": {
                        "all candidates": judge_candidates(round_dir, None, task, oracles),
                        **{row: judge_candidates(round_dir, chosen, task, oracles) for row, chosen in picks.items()},
                    },
                    "methods": {},
                }
                for row, selected in picks.items():
                    slug = row.split()[2].lower()
                    model2 = train_round(
                        muse,
                        round_dir,
                        selected,
                        recipe=RECIPES["round2"],
                        steps=round2_steps,
                        progress=False,
                        adapter_dir=base / f"round2-{slug}{suffix}",
                    )
                    images, prompts_ = generate(muse, task.prompts, num_images, config, model=model2, adapter="adapter")
                    run["methods"][row] = measure(images, prompts_, task, oracles)
                    done = drawn.get(row, ([], []))
                    drawn[row] = (done[0] + images, done[1] + prompts_)
                    if not repeat:
                        adapters[row] = (model2, base / f"round2-{slug}")
                runs.append(run)
            block = {
                "reference": task.reference_prompt,
                "prompts": task.prompts,
                # each row over all its images (Round 2: every repeat's), so ± is the error of the pooled rate
                "methods": {row: measure(*drawn[row], task, oracles, scorer) for row in FEEDBACK_ROWS},
                "picks": runs[0]["picks"],
                "training_sets": mean_over_styles(dict(enumerate(runs)), "training_sets"),
                "lambda_a_sweep": {},
            }
            if repeats > 1:
                block["repeats"] = runs
            for row in FEEDBACK_ROWS[:2]:  # how style guidance λA trades style against content
                block["lambda_a_sweep"][row] = {}
                for lambda_a in LAMBDA_A_SWEEP:
                    swept = SamplingConfig(steps=12, guidance_scale=GUIDANCE, lambda_a=lambda_a)
                    images, prompts_ = generate(
                        muse,
                        task.prompts,
                        min(num_images, SWEEP_IMAGES),
                        swept,
                        model=adapters[row][0],
                        adapter="adapter",
                    )
                    block["lambda_a_sweep"][row][str(lambda_a)] = measure(images, prompts_, task, oracles)
            results["styles"][style] = block
        results["mean"] = mean_over_styles(
            results["styles"],
            "methods",
            ("style_accuracy", "shape_accuracy", "colour_accuracy", "content_accuracy", "leakage")
            + ("text_score", "style_score"),
        )
        keys = tuple(key for key, _, _ in TRAINING_SET_COLUMNS)
        results["training_sets_mean"] = mean_over_styles(results["styles"], "training_sets", keys)
        write_json(folder / "results.json", results)
        plot_feedback(results, folder)
        (folder / "report.md").write_text(feedback_markdown(results))
    return results


FEEDBACK_COLUMNS = [c for c in TABLE_COLUMNS if c[0] not in ("train_seconds", "trainable_parameters")]
REPEAT_COLUMNS = [c for c in TABLE_COLUMNS if c[0] in ("style_accuracy", "shape_accuracy", "leakage")]


def _recipe_note(results: dict, kind: str) -> str:
    """ ", recipe `R`" for a results file that records its recipes (older ones do not)."""
    recipe = results.get("recipes", {}).get(kind)
    return f", recipe `{recipe}`" if recipe else ""


def feedback_markdown(results: dict) -> str:
    """The feedback table (mean over styles, then per style) with the two plots."""
    intro = [
        f"# Iterative training with feedback in the shapes world (model `{results['model']}`)",
        "",
        f"Round 1 trains on one reference render{_recipe_note(results, 'round1')}; Round 2 trains a fresh adapter "
        f"(d_prj 32, not shared{_recipe_note(results, 'round2')}) on one candidate per feedback prompt "
        f"({results['per_prompt']} candidates each; the VQ tokens it was decoded from) picked by CLIP text score, "
        "at random, or by the oracles (a stand-in upper bound for a person's picks; evaluation only). Evaluation: "
        f"{results['num_images']} images per prompt on prompts disjoint from the feedback prompts, CFG "
        f"{results['guidance']}, λA {results['lambda_a']}. {SE_NOTE}",
    ]
    plots = "![style accuracy vs leakage](style_vs_leakage.png) ![style accuracy vs lambda A](style_vs_lambda_a.png)"
    training = []
    if "training_sets_mean" in results:
        training = [
            "",
            "What each Round 2 trained on: the oracles on its picks (one per feedback prompt), against the prompt "
            "each was drawn for; mean over held-out styles. Compare each row with its Round 2 row above.",
            "",
            *markdown_table(results["training_sets_mean"], TRAINING_SET_COLUMNS),
        ]
    if results.get("repeats", 1) > 1 and results["styles"]:
        styles = list(results["styles"].values())
        per_repeat = {
            f"repeat {r} (candidate seed {r}): {row}": {
                key: float(np.mean([block["repeats"][r]["methods"][row][key] for block in styles]))
                for key, _, _ in REPEAT_COLUMNS
            }
            for r in range(results["repeats"])
            for row in FEEDBACK_ROWS[1:]
        }
        training += [
            "",
            f"Each Round 2 row above pools {results['repeats']} repeats: candidates drawn with another seed, so "
            "other picks and another Round 2. Its ± counts only the sampling of its images; the spread of the "
            "repeats below is what other picks do. Each repeat alone (mean over held-out styles):",
            "",
            *markdown_table(per_repeat, REPEAT_COLUMNS),
        ]
    return report_markdown(results, FEEDBACK_COLUMNS, intro, after_mean="\n".join([plots, *training]))


def plot_feedback(results: dict, folder) -> None:
    """style accuracy vs leakage per method, and style / content accuracy vs λA (PNG, matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4), dpi=120)
    for row, metrics in results["mean"].items():
        axis.errorbar(
            metrics["leakage"],
            metrics["style_accuracy"],
            xerr=metrics.get("leakage_se"),
            yerr=metrics.get("style_accuracy_se"),
            fmt="o",
            markersize=8,
            capsize=3,
            label=row,
        )
    axis.set_xlabel("content leakage (lower is better)")
    axis.set_ylabel("style accuracy (higher is better)")
    # leakage is often a few per cent: a 0-1 axis would stack every point on its left edge
    axis.set_xlim(-0.005, max(0.1, 1.25 * max(m["leakage"] for m in results["mean"].values())))
    axis.set_ylim(-0.02, 1.02)
    axis.legend(fontsize=7, loc="lower right")
    axis.set_title("mean over held-out styles (± standard error)")
    figure.tight_layout()
    figure.savefig(folder / "style_vs_leakage.png")
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5, 4), dpi=120)
    for row in FEEDBACK_ROWS[:2]:
        for key, style in (("style_accuracy", "-"), ("content_accuracy", "--")):
            values = [
                np.mean([block["lambda_a_sweep"][row][str(a)][key] for block in results["styles"].values()])
                for a in LAMBDA_A_SWEEP
            ]
            axis.plot(LAMBDA_A_SWEEP, values, style, marker="o", label=f"{row}: {key.split('_')[0]}")
    axis.set_xlabel("λA (StyleDrop style guidance, Eq. 4)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(-0.02, 1.02)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "style_vs_lambda_a.png")
    plt.close(figure)


def run_feedback_cli(args) -> int:
    results = run_feedback_table(
        args.out,
        model=args.model,
        styles=args.style,
        per_prompt=args.per_prompt,
        num_images=args.num_images,
        round1_steps=args.steps,
        round2_steps=args.steps,
        overwrite=args.overwrite,
        repeats=args.repeats,
    )
    print(feedback_markdown({**results, "styles": {}}))
    return 0


# ---- two adapters: a new object in a new style (StyleDrop §4.4; issue #30) --------------------------------------
GLYPH_COLOUR = "orange"  # the glyph "object" the content adapter learns
GLYPH_RENDERS = 4  # content adapter training images in one style (the issue: 3-5)
GAMMAS = (0.3, 0.5, 0.7)
# The object's renders for the content adapter: one per style, each style named in its caption, all SEEN styles
# (never the held-out ones it is evaluated in), so that "sks glyph" comes apart from any one look
CONTENT_STYLES = (
    "flat color",
    "watercolor",
    "chalkboard",
    "striped",
    "pen hatching",
    "mosaic",
    "gradient background",
    "film grain",
)


def measure_glyph(images: list[Image.Image], style: str, oracles, detector) -> dict:
    """Glyph rate (detector), style accuracy, colour accuracy, the both-correct rate (glyph AND style), and the
    object-only (glyph, not the style) and style-only (the style, no glyph) rates."""
    from .world.oracles import ATTRIBUTES

    array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    glyph = detector.predict(array)
    predicted = oracles.predict(array)
    styled = predicted["style"] == ATTRIBUTES["style"].index(style)
    metrics = {
        "glyph_rate": float(glyph.mean()),
        "style_accuracy": float(styled.mean()),
        "colour_accuracy": float((predicted["colour"] == COLOUR_NAMES.index(GLYPH_COLOUR)).mean()),
        "both_correct": float((glyph & styled).mean()),
        "object_only": float((glyph & ~styled).mean()),
        "style_only": float((~glyph & styled).mean()),
        "num_images": len(images),
    }
    rates = ("glyph_rate", "style_accuracy", "colour_accuracy", "both_correct", "object_only", "style_only")
    return {**metrics, **standard_errors(metrics, rates)}


def glyph_content_images(styles: tuple[str, ...]) -> tuple[list[Image.Image], list[str]]:
    """The content adapter's training set: renders of the orange glyph, one per style in ``styles`` (or
    ``GLYPH_RENDERS`` of one style), each captioned "a large orange sks glyph in {style} style"."""
    from .world import glyph_caption, render_glyphs

    if len(styles) == 1:
        styles = styles * GLYPH_RENDERS
    images = [
        render_glyphs(1, seed=i, colour=GLYPH_COLOUR, size="large", styles=(style,))[0][0]
        for i, style in enumerate(styles)
    ]
    return [Image.fromarray(a) for a in images], [glyph_caption(GLYPH_COLOUR, style=s) for s in styles]


def run_two_adapter_table(
    out,
    model: str | None = None,
    styles: tuple[str, ...] | None = None,
    gammas: tuple[float, ...] = GAMMAS,
    num_images: int = 32,
    steps: int | None = None,
    overwrite: bool = False,
    content_recipe: str = "shapes-dreambooth",
    content_styles: tuple[str, ...] = CONTENT_STYLES,
) -> dict:
    """Train a content adapter on renders of the glyph (a shape no model saw) in ``content_styles`` and, per style
    of ``styles`` (default: the held-out ones), a style adapter on one render of it; draw "a large orange sks glyph
    in {style} style" with each adapter alone (Eq. 4), with both mixed by Eq. 5-6 over ``gammas`` and with γ
    scheduled 1 → 0, and with both stacked in one forward (``compose.stack_adapters``); judge with the oracles'
    style head and a glyph detector trained without the held-out styles. Also draws the style adapter on the known
    shapes: how often StyleDrop alone gets shape AND style right in that style, a ceiling for any composition."""
    from .api import load, sample
    from .dreambooth import train_dreambooth
    from .io import make_grid, output_dir, save_png, write_json
    from .sampling import SamplingConfig
    from .training import default_recipe, load_recipe, train_adapter
    from .world import HELD_OUT_STYLES, glyph_caption, glyph_oracle_path, render_glyphs
    from .world.oracles import ATTRIBUTES, load_glyph_oracle, load_oracles

    styles = tuple(styles or HELD_OUT_STYLES)
    tasks = {style: make_task(style) for style in styles}  # settings are checked before any training
    for style in content_styles:
        make_task(style)
    if set(content_styles) & set(styles):
        raise StylecraftError("the content adapter's render styles must not include an evaluated style")
    for gamma in gammas:
        SamplingConfig(gamma=gamma)
    if num_images < 1:
        raise StylecraftError(f"--num-images must be at least 1, got {num_images}")
    oracles, detector = load_oracles(), load_glyph_oracle(glyph_oracle_path(seen_styles_only=True))
    content_images, captions = glyph_content_images(tuple(content_styles))
    style_recipe_name = default_recipe(model, "round1")
    results: dict = {
        "model": None,
        "styles": styles,
        "content_prompt": glyph_caption(GLYPH_COLOUR),  # Eq. 5-6's c: the prompt without the style
        "content_captions": captions,
        "content_recipe": content_recipe,
        "style_recipe": style_recipe_name,
        "detector": "glyph_oracle_seen (trained on seen styles only)",
        "num_images": num_images,
        "guidance": GUIDANCE,
        "lambda_a": LAMBDA_A,
        "eval_seed": EVAL_SEED,
        "per_style": {},
    }
    with output_dir(out, overwrite=overwrite) as folder:
        recipe = load_recipe(content_recipe, steps=steps)
        if recipe.lambda_prior > 0:  # DreamBooth's class prompt: the caption without the rare token
            recipe = load_recipe(content_recipe, steps=steps, class_prompt=captions[0].replace("sks ", ""))
        train_dreambooth(load(model), content_images, captions, recipe, folder / "content")
        grid_rows = [content_images[:8]]
        for style, task in tasks.items():
            style_folder = folder / f"style-{re.sub(r'[^a-z0-9]+', '-', style)}"
            train_adapter(
                load(model),
                [task.reference],
                [task.reference_prompt],
                load_recipe(style_recipe_name, steps=steps),
                style_folder,
            )
            muse = load(model)
            results["model"] = muse.name
            prompt = glyph_caption(GLYPH_COLOUR, style=style)
            renders = render_glyphs(num_images, seed=EVAL_SEED, colour=GLYPH_COLOUR, size="large", styles=(style,))[0]
            block: dict = {
                "prompt": prompt,
                "style_reference": task.reference_prompt,
                # what the judges score on real renders of the target: the ceiling of every row
                "renders_of_the_target": measure_glyph([Image.fromarray(a) for a in renders], style, oracles, detector),
                "rows": {},
            }
            # StyleDrop alone on the known shapes in this style: shape AND style, the ceiling of a composition
            known = sample(
                muse,
                task.prompts,
                adapter=style_folder,
                num_images=max(1, num_images // len(task.prompts)),
                seed=EVAL_SEED,
                progress=False,
            )
            predicted = oracles.predict(np.stack([np.asarray(im) for im in known]))
            wanted = np.array(
                [SHAPES.index(parse_caption(task.prompts[i % len(task.prompts)])["shape"]) for i in range(len(known))]
            )
            both = (predicted["shape"] == wanted) & (predicted["style"] == ATTRIBUTES["style"].index(style))
            block["style_adapter_known_shapes"] = {"both_correct": float(both.mean()), "num_images": len(known)}
            runs: dict[str, dict] = {
                "content adapter only (Eq. 4)": {"adapter": folder / "content"},
                "style adapter only (Eq. 4)": {"adapter": style_folder},
            }
            two = {"style_adapter": style_folder, "content_adapter": folder / "content", "style_descriptor": style}
            for gamma in gammas:
                runs[f"both, γ = {gamma:g} (Eq. 5-6)"] = {**two, "compose": "mix", "gamma": gamma}
            runs["both, γ 1 → 0 over the steps (Eq. 5-6)"] = {**two, "compose": "mix", "gamma": 1.0, "gamma_end": 0.0}
            runs["both, stacked in one forward"] = {**two, "compose": "stack"}
            for name, run in runs.items():
                config = SamplingConfig(
                    steps=12, guidance_scale=GUIDANCE, gamma=run.pop("gamma", 0.5), gamma_end=run.pop("gamma_end", None)
                )
                images = sample(
                    muse, [prompt], config=config, num_images=num_images, seed=EVAL_SEED, progress=False, **run
                )
                block["rows"][name] = measure_glyph(images, style, oracles, detector)
                grid_rows.append(images[:8])
            results["per_style"][style] = block
        grid = make_grid([im.resize((96, 96), 0) for row in grid_rows for im in row], columns=8)
        save_png(grid, folder / "grid.png", {"rows": ["content inputs", *[f"{s}: {r}" for s in styles for r in runs]]})
        write_json(folder / "results.json", results)
        (folder / "table.md").write_text(two_adapter_markdown(results))
    return results


def two_adapter_markdown(results: dict) -> str:
    """A summary (both-correct per route and style) and one table per style with every rate."""
    styles = results["styles"]
    first = results["per_style"][styles[0]]
    summary = {
        "renders of the target (judges' ceiling)": {
            s: results["per_style"][s]["renders_of_the_target"]["both_correct"] for s in styles
        },
        "style adapter on the known shapes (shape and style)": {
            s: results["per_style"][s]["style_adapter_known_shapes"]["both_correct"] for s in styles
        },
    }
    for row in first["rows"]:
        summary[row] = {s: results["per_style"][s]["rows"][row]["both_correct"] for s in styles}
    columns = [
        ("both_correct", "both correct ↑", "{:.2f}"),
        ("object_only", "object only", "{:.2f}"),
        ("style_only", "style only", "{:.2f}"),
        ("glyph_rate", "glyph", "{:.2f}"),
        ("style_accuracy", "style acc.", "{:.2f}"),
        ("colour_accuracy", "colour acc.", "{:.2f}"),
    ]
    lines = [
        f"# Two adapters: a new glyph in {', '.join(styles)} (model `{results['model']}`)",
        "",
        f"Content adapter (recipe `{results['content_recipe']}`): {len(results['content_captions'])} renders of the "
        f"glyph, a shape no model saw, captioned e.g. `{results['content_captions'][0]}`. Style adapter (recipe "
        f"`{results['style_recipe']}`): one render per style. Eq. 5-6's content prompt: `{results['content_prompt']}`. "
        f"{results['num_images']} images per row, seed {results['eval_seed']}, CFG {results['guidance']}, λA "
        f"{results['lambda_a']}. Object: {results['detector']}; style: the oracles' style head. {SE_NOTE} "
        "Grid: grid.png (first row: the content adapter's inputs; then 8 images per row, style by style).",
        "",
        "Both correct (object AND style):",
        "",
        "| row | " + " | ".join(styles) + " |",
        "|---" * (len(styles) + 1) + "|",
        *[f"| {row} | " + " | ".join(f"{v[s]:.2f}" for s in styles) + " |" for row, v in summary.items()],
    ]
    for style in styles:
        block = results["per_style"][style]
        rows = {"renders of the target (judges' ceiling)": block["renders_of_the_target"], **block["rows"]}
        lines += ["", f"## {style}: `{block['prompt']}`", "", *markdown_table(rows, columns)]
    return "\n".join(lines) + "\n"


def run_two_adapter_cli(args) -> int:
    results = run_two_adapter_table(
        args.out,
        model=args.model,
        styles=tuple(args.style) if args.style else None,
        gammas=tuple(args.gamma or GAMMAS),
        num_images=args.num_images,
        steps=args.steps,
        overwrite=args.overwrite,
        content_recipe=args.content_recipe,
        content_styles=tuple(args.content_style or CONTENT_STYLES),
    )
    print(two_adapter_markdown(results))
    return 0
