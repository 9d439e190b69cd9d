"""Which UNet blocks carry an IP-Adapter's style, and which its content? ``stylecraft instantstyle probe`` (#29).

InstantStyle (Wang et al. 2024, arXiv 2404.02733, §3.3 and Fig. 6) found by hand, on SDXL, that the image tokens in
``up_blocks.0.attentions.1`` carry the reference's style and those in ``down_blocks.2.attentions.1`` its layout. The
probe asks the same question of any UNet + IP-Adapter: it turns the adapter on in one block at a time (every key of
``valid_block_keys``: each attention and each whole block) and measures, against the adapter off everywhere, how
far each block moves the images

- toward the reference's style (``style gain``),
- toward the reference's content (``leakage``) and away from the prompt (``content loss``).

From those rows it recommends a ``style`` set (attentions ranked by style gain minus leakage, added while their
summed leakage stays within a budget: by default a third of all blocks' leakage, the issue's target) and a
``layout`` block (the most leakage). Per-block numbers need not add up, so the recommended set is then drawn and
measured, next to the paper's ``style`` preset for the UNet's layout (``BLOCK_PRESETS``; and the model folder's own,
when it declares another), and they are compared image by image. probe.json's ``block_presets`` holds the
recommendation in the form a model folder declares (``world pretrain ship-sd --presets probe.json``).

Every configuration draws the same prompts from the same seed and reuses one encoded reference embedding per task,
so two configurations differ only in which IP-Adapter processors are on; configurations that turn on the same
processors (a block with a single attention and that attention) are drawn once.

Judges score each image (``Judge``): in the shapes world the style judge's rank of the reference's style among 50
held-out styles, and the oracles' shape and colour (``world.space_eval``); on real models CLIP: the style score
(image-image cosine with the reference), the text score of the prompt, and the text score of
``--reference-content`` (what the reference shows) as leakage.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from .errors import StylecraftError
from .instantstyle import (
    BLOCK_PRESETS,
    DEFAULT_IP_ADAPTER,
    InstantStyle,
    architecture_of,
    load_instantstyle,
    resolve_blocks,
    set_ip_adapter_blocks,
    valid_block_keys,
)
from .io import load_image, make_grid, output_dir, save_png, to_pil_images, write_json
from .validation import MAX_IMAGES, check_fields, integer, optional, real
from .world import renderer, space
from .world.space_eval import REFERENCE, candidate_keys, family_task, style_rank

VERDICT_SHARE = 0.25  # a block "moves" style (or content) when it gives at least this share of all blocks' effect
PROBE_FLAGS = {
    "images_per_block": integer(1, MAX_IMAGES),
    "families": integer(1, len(space.HELD_OUT_FAMILIES)),
    "scale": real(),
    "max_leakage": optional(real()),
}


# ----------------------------------------------------------------------------------------------- tasks and judges


@dataclass
class ProbeTask:
    """One reference and the prompts drawn with it in every configuration (one pipeline call)."""

    name: str
    reference: Image.Image
    prompts: list[str]
    family: Any = None  # world tasks: the held-out family's ``space_eval.FamilyTask`` (candidates, asked content)


class Judge(Protocol):
    """Scores per image [n], higher meaning more of it; images are float [n, 3, H, W] in [0, 1]."""

    def style(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        """How much each image has the reference's style."""

    def content(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        """How well each image shows its prompt (``task.prompts[i]``)."""

    def leak(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        """How much each image shows the reference's content instead."""


@dataclass
class WorldJudge:
    """The shapes world's measures (``space_eval.measure_family``) per image: 1 or 0 each."""

    style_judge: Any  # world.style_judge.StyleEmbedder
    oracles: Any  # world.oracles.Oracles
    keys: dict[str, torch.Tensor] = field(default_factory=dict)  # each task's candidate keys, computed once

    def style(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        """``space_eval.style_rank``: the share of the task's 49 other candidate styles that the reference's style
        (candidate 0) is nearer than, per image (0.5 by chance, 1 when retrieved). Top-1 retrieval stays at 0 for a
        block that moves the palette and ground but not the texture; the rank shows that move."""
        if task.name not in self.keys:
            self.keys[task.name] = candidate_keys(task.family.candidates, self.style_judge)
        return style_rank(self.style_judge.embed(images) @ self.keys[task.name].T)

    def content(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        """1 where the oracles read both the asked shape and the asked colour."""
        predicted = self.oracles.predict(images)
        asked = (predicted["shape"] == task.family.shapes) & (predicted["colour"] == task.family.colours)
        return torch.from_numpy(asked).float()

    def leak(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        """1 where the oracles read the reference's shape or colour (never asked: the prompts avoid both)."""
        predicted = self.oracles.predict(images)
        leaked = (predicted["shape"] == renderer.SHAPES.index(REFERENCE["shape"])) | (
            predicted["colour"] == renderer.COLOUR_NAMES.index(REFERENCE["colour"])
        )
        return torch.from_numpy(leaked).float()


@dataclass
class ClipJudge:
    """CLIP scores (StyleDrop §4.1): style = image-image cosine with the reference, content = the prompt's text
    score, leakage = the text score of ``reference_content``, a caption of what the reference shows (e.g. "a cat")."""

    scorer: Any  # scoring.ClipScorer
    reference_content: str

    def style(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        return self.scorer.style_scores(to_pil_images(images), task.reference)

    def content(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        return self.scorer.text_scores(to_pil_images(images), task.prompts)

    def leak(self, images: torch.Tensor, task: ProbeTask) -> torch.Tensor:
        return self.scorer.text_scores(to_pil_images(images), self.reference_content)


def world_tasks(families: int, images: int) -> list[ProbeTask]:
    """The first ``families`` held-out families' tasks: the reference (a large red circle in a style of the family)
    and ``images`` prompts of other shapes and colours with no style words (``space_eval.family_task``)."""
    names = list(space.HELD_OUT_FAMILIES)[:families]
    tasks = [family_task(name, images) for name in names]
    return [ProbeTask(t.family, Image.fromarray(t.reference), t.prompts(with_style=False), t) for t in tasks]


# ----------------------------------------------------------------------------------------------- drawing and measuring


@dataclass
class ProbeConfig:
    """How each configuration is drawn, and the style set's leakage budget."""

    images_per_block: int = 8  # images per task and configuration, drawn in one pipeline call
    steps: int = 20  # denoising steps
    guidance: float = 3.0  # classifier-free guidance scale (shapes-sd's evaluation uses 3)
    seed: int = 0  # task i draws from torch.Generator("cpu") seeded seed + i in every configuration: paired images
    scale: float = 1.0  # IP-Adapter scale in the blocks that are on
    max_leakage: float | None = None  # the style set's summed per-block leakage; None: a third of all blocks'


@dataclass
class Run:
    """One configuration's images and per-image scores, all tasks concatenated."""

    images: torch.Tensor  # [n, 3, H, W] in [0, 1]
    style: torch.Tensor  # [n]
    content: torch.Tensor  # [n]
    leak: torch.Tensor  # [n]
    seconds: float

    def means(self) -> dict[str, float]:
        return {name: round(float(getattr(self, name).mean()), 4) for name in ("style", "content", "leak")}


class Prober:
    """Draws and judges block sets on one InstantStyle pipeline; a set is drawn once per set of processors it turns
    on (``Prober.runs``)."""

    def __init__(self, style: InstantStyle, tasks: list[ProbeTask], judge: Judge, config: ProbeConfig):
        self.style, self.tasks, self.judge, self.config = style, tasks, judge, config
        self.runs: dict[frozenset[str], Run] = {}
        pipe = style.pipe
        do_cfg = config.guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
        self.embeds = []  # per task, in diffusers' precomputed layout: [2, 1, ...] with CFG ([negative; positive])
        for task in tasks:
            positive, negative = style.encode_style(task.reference)  # encoded once, reused by every configuration
            positive, negative = (e.to(pipe.unet.device, pipe.unet.dtype) for e in (positive, negative))
            self.embeds.append(torch.stack([negative, positive]) if do_cfg else positive[None])

    @torch.no_grad()
    def run(self, keys: list[str]) -> Run:
        """Images of every task with the IP-Adapter on in ``keys`` only (none: off everywhere), and their scores."""
        active = frozenset(set_ip_adapter_blocks(self.style.pipe.unet, keys, self.config.scale))
        if active in self.runs:
            return self.runs[active]
        began = time.time()
        images, scores = [], {"style": [], "content": [], "leak": []}
        for index, (task, embeds) in enumerate(zip(self.tasks, self.embeds, strict=True)):
            drawn = self.style.pipe(
                prompt=task.prompts,
                ip_adapter_image_embeds=[embeds],
                num_inference_steps=self.config.steps,
                guidance_scale=self.config.guidance,
                generator=torch.Generator("cpu").manual_seed(self.config.seed + index),  # each task its own noise
                output_type="pt",
            ).images.float()  # [len(prompts), 3, H, W] in [0, 1]
            images.append(drawn.cpu())
            for name, scores_of in scores.items():
                scores_of.append(getattr(self.judge, name)(drawn, task).float().cpu())
        self.runs[active] = Run(torch.cat(images), *(torch.cat(s) for s in scores.values()), time.time() - began)
        return self.runs[active]


def effects(run: Run, baseline: Run) -> dict[str, float]:
    """What turning blocks on did, in means over the images: more style, less content, more of the reference."""
    return {
        "style_gain": round(float((run.style - baseline.style).mean()), 4),
        "content_loss": round(float((baseline.content - run.content).mean()), 4),
        "leakage": round(float((run.leak - baseline.leak).mean()), 4),
    }


def verdict(row: dict[str, float], everything: dict[str, float]) -> str:
    """``style``, ``layout``, ``style+layout`` or ``-``: which of all blocks' effects this block gives a
    ``VERDICT_SHARE`` of (layout: leakage or content loss)."""

    def moves(name: str) -> bool:
        return row[name] > 0 and row[name] >= VERDICT_SHARE * everything[name]

    style, layout = moves("style_gain"), moves("leakage") or moves("content_loss")
    return {(True, True): "style+layout", (True, False): "style", (False, True): "layout"}.get((style, layout), "-")


def whole_blocks(keys: list[str], valid: list[str]) -> list[str]:
    """``keys`` with every block whose attentions are all in it written as the block (``up_blocks.1``)."""
    chosen, result = set(keys), []
    for block in [key for key in valid if "attentions" not in key]:
        attentions = {key for key in valid if key.startswith(f"{block}.attentions.")}
        if attentions <= chosen:
            result.append(block)
            chosen -= attentions
    return result + sorted(chosen)


def recommend(rows: list[dict], everything: dict[str, float], valid: list[str], max_leakage: float | None) -> dict:
    """The ``style`` set and the ``layout`` block from the per-attention rows (see the module docstring)."""
    budget = max(everything["leakage"], 0.0) / 3 if max_leakage is None else max_leakage
    ranked = sorted(
        (row for row in rows if ".attentions." in row["block"]),
        key=lambda row: row["style_gain"] - row["leakage"],
        reverse=True,
    )
    chosen, leaked, gained = [], 0.0, 0.0
    for row in ranked:
        if row["style_gain"] - row["leakage"] <= 0 or (chosen and gained >= everything["style_gain"]):
            break  # the rest cost more than they give, or the set already gains as much style as all blocks
        if row["style_gain"] > 0 and leaked + max(row["leakage"], 0.0) <= budget:
            chosen.append(row["block"])
            leaked, gained = leaked + max(row["leakage"], 0.0), gained + row["style_gain"]
    rule = f"attentions by style gain - leakage, summed leakage <= {budget:.4f}"
    if not chosen:  # the best-ranked attention all the same, so that there is a set to draw and compare
        why = (
            f"none within leakage {budget:.4f}" if any(row["style_gain"] > 0 for row in ranked) else "none gains style"
        )
        chosen, rule = [ranked[0]["block"]], f"{why}: the best-ranked attention"
    layout = max(ranked, key=lambda row: row["leakage"])
    return {
        "style": whole_blocks(chosen, valid),
        "layout": whole_blocks([layout["block"]], valid) if layout["leakage"] > 0 else [],
        "max_leakage": round(budget, 4),
        "rule": rule,
    }


def compare(recommended: Run, preset: Run) -> dict:
    """Paired comparison of style − leakage per image (same prompts, same noise): ``beats``/``equals``/``loses to``,
    where equal means within two standard errors of the mean difference."""
    difference = (recommended.style - recommended.leak) - (preset.style - preset.leak)  # [n]
    mean = float(difference.mean())
    stderr = float(difference.std() / len(difference) ** 0.5) if len(difference) > 1 else 0.0
    outcome = "equals" if abs(mean) <= 2 * stderr else "beats" if mean > 0 else "loses to"
    return {"difference": round(mean, 4), "stderr": round(stderr, 4), "outcome": outcome}


@dataclass
class ProbeResult:
    report: dict  # what probe.json holds
    images: dict[str, torch.Tensor]  # configuration label ("none", "all", a key, "recommended", "preset") -> images


def probe(style: InstantStyle, tasks: list[ProbeTask], judge: Judge, config: ProbeConfig) -> ProbeResult:
    """Per-block rows against the adapter off (and on everywhere), the recommendation, and its evaluation."""
    began = time.time()
    unet = style.pipe.unet
    valid = valid_block_keys(unet)
    if not valid:
        raise StylecraftError("the UNet has no IP-Adapter processors; load an IP-Adapter before probing its blocks")
    prober = Prober(style, tasks, judge, config)
    baseline, everything = prober.run([]), prober.run(resolve_blocks(unet, "all"))
    all_effects = effects(everything, baseline)
    images = {"none": baseline.images, "all": everything.images}
    rows = []
    for key in valid:
        run = prober.run([key])
        row = {"block": key, **run.means(), **effects(run, baseline), "seconds": round(run.seconds, 2)}
        rows.append({**row, "verdict": verdict(row, all_effects)})
        images[key] = run.images
    recommendation = recommend(rows, all_effects, valid, config.max_leakage)

    recommended = prober.run(recommendation["style"])
    evaluation = {"recommended": {"blocks": recommendation["style"], **recommended.means()}}
    evaluation["recommended"].update(effects(recommended, baseline))
    images["recommended"] = recommended.images
    # The paper's preset for this layout (the bar), and the model folder's own when it declares another.
    presets = {f"{architecture_of(unet)} style": BLOCK_PRESETS.get(architecture_of(unet), {}).get("style")}
    declared = style.block_presets.get("style")
    if declared and declared not in presets.values():
        presets[f"{style.architecture} style (declared)"] = declared
    evaluation["presets"] = []
    for name, keys in presets.items():
        if keys and set(keys) <= set(valid):  # e.g. SDXL's preset names attentions an SD 1.5 UNet lacks
            run = prober.run(keys)
            comparison = compare(recommended, run)
            evaluation["presets"].append(
                {"name": name, "blocks": keys, **run.means(), **effects(run, baseline), "comparison": comparison}
            )
            images[f"preset {name}"] = run.images

    report = {
        "settings": {
            **style.sources,
            "architecture": style.architecture,
            **asdict(config),
            "judge": type(judge).__name__,
            "tasks": [{"name": t.name, "prompts": t.prompts} for t in tasks],
        },
        "baseline": {"none": baseline.means(), "all": {**everything.means(), **all_effects}},
        "rows": rows,
        "recommendation": recommendation,
        "evaluation": evaluation,
        # in the form a model folder declares (``model_declaration``; ``world pretrain ship-sd --presets``)
        "block_presets": {
            "style": recommendation["style"],
            "style+layout": recommendation["style"]
            + [k for k in recommendation["layout"] if k not in recommendation["style"]],
        },
        "timings": {
            "configurations_drawn": len(prober.runs),
            "images_drawn": sum(len(run.images) for run in prober.runs.values()),
            "seconds": round(time.time() - began, 2),
        },
    }
    return ProbeResult(report, images)


def format_table(report: dict) -> str:
    """The per-block table, the recommendation and the comparison with the preset, as printed."""
    columns = f"{'block':<28} {'style':>6} {'content':>7} {'leak':>6}  {'style gain':>10} {'content loss':>12} "
    lines = [columns + f"{'leakage':>8}  verdict", "-" * (len(columns) + 17)]

    def line(label: str, values: dict, effect: bool = True, tail: str = "") -> str:
        text = f"{label:<28} {values['style']:>6.3f} {values['content']:>7.3f} {values['leak']:>6.3f}  "
        if effect:
            text += f"{values['style_gain']:>+10.3f} {values['content_loss']:>+12.3f} {values['leakage']:>+8.3f}  "
        return (text + tail).rstrip()

    lines.append(line("(none: adapter off)", report["baseline"]["none"], effect=False))
    lines.append(line("(all blocks)", report["baseline"]["all"]))
    lines += [line(row["block"], row, tail=row["verdict"]) for row in report["rows"]]
    recommendation, evaluation = report["recommendation"], report["evaluation"]
    lines.append("")
    lines.append(f"recommended style set: {', '.join(recommendation['style'])}  ({recommendation['rule']})")
    lines.append(f"recommended layout block: {', '.join(recommendation['layout']) or '(none leaks)'}")
    lines.append(line("recommended set, drawn", evaluation["recommended"]))
    if not evaluation["presets"]:
        lines.append("no style preset names blocks of this UNet: nothing to compare with")
    for preset in evaluation["presets"]:
        lines.append(line(f"{preset['name']} preset, drawn", preset))
        comparison = preset["comparison"]
        lines.append(
            f"the recommendation {comparison['outcome']} the {preset['name']} preset ({', '.join(preset['blocks'])}): "
            f"style - leakage differs by {comparison['difference']:+.3f} per image (standard error "
            f"{comparison['stderr']:.3f}; equal within 2)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- command line


def build_parser(prog: str = "stylecraft instantstyle probe") -> argparse.ArgumentParser:
    """The probe's own parser; its ``command`` is ``instantstyle-probe`` (``cli.RUNNERS``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Turn the IP-Adapter on one UNet block at a time; measure style gain and content leakage per "
        "block, recommend style and layout blocks, and compare the recommended set with the architecture's preset.",
    )
    parser.set_defaults(command="instantstyle-probe")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or warnings")
    parser.add_argument(
        "--model", default=None, help="SD 1.5 / SDXL hub id or diffusers folder (default: the shapes world's shapes-sd)"
    )
    parser.add_argument(
        "--ip-adapter",
        default=None,
        help=f"IP-Adapter repo id or folder (default: the model's own, else {DEFAULT_IP_ADAPTER})",
    )
    parser.add_argument("--ip-adapter-weight", default=None, help="weights file inside --ip-adapter")
    parser.add_argument("--image-encoder", default=None, help="CLIP vision folder or subfolder (image_encoder)")
    parser.add_argument(
        "--judge",
        choices=["world", "clip"],
        default=None,
        help="world: the shapes world's style judge and oracles on held-out families; clip: CLIP scores of "
        "--style-image and --prompt (default: clip with --style-image, else world)",
    )
    parser.add_argument("--clip", default=None, help="CLIPModel hub id or folder for --judge clip (default: mini CLIP)")
    parser.add_argument("--style-image", default=None, help="the style reference (--judge clip)")
    parser.add_argument("--reference-content", default=None, help="what the style image shows, e.g. 'a cat' (clip)")
    parser.add_argument("--prompt", action="append", default=None, help="prompt (repeat; --judge clip)")
    parser.add_argument("--families", type=int, default=3, help="held-out families to probe (--judge world; default 3)")
    parser.add_argument("--images-per-block", type=int, default=8, help="images per task and block (default 8)")
    parser.add_argument("--scale", type=float, default=1.0, help="IP-Adapter scale in the blocks that are on")
    parser.add_argument(
        "--max-leakage", type=float, default=None, help="style set's summed leakage (default: a third of all blocks')"
    )
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch.Generator('cpu'), every block (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights dtype (default float32)"
    )
    parser.add_argument("--out", required=True, help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder when done")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """``stylecraft instantstyle probe``: print the table; write probe.json and grids/ to ``--out``."""
    # Cheap checks first, before any model loads.
    check_fields(vars(args), PROBE_FLAGS, flags=True)
    judge_name = args.judge or ("clip" if args.style_image else "world")
    if judge_name == "clip":
        missing = [flag for flag in ("style_image", "reference_content", "prompt") if not getattr(args, flag)]
        if missing:
            raise StylecraftError(
                f"--judge clip needs --{missing[0].replace('_', '-')} (--style-image IMG, --reference-content "
                "'what it shows, e.g. a cat', and --prompt P, repeatable)"
            )
        prompts = [args.prompt[i % len(args.prompt)] for i in range(args.images_per_block)]  # given ones in turn
        tasks = [ProbeTask("reference", load_image(args.style_image), prompts)]
    else:
        given = [flag for flag in ("style_image", "reference_content", "prompt", "clip") if getattr(args, flag)]
        if given:
            raise StylecraftError(
                f"--{given[0].replace('_', '-')} is for --judge clip; the world judge draws the held-out families' "
                "own references and prompts (drop it, or pass --judge clip)"
            )
        tasks = world_tasks(args.families, args.images_per_block)
    config = ProbeConfig(args.images_per_block, args.steps, args.guidance, args.seed, args.scale, args.max_leakage)

    # --out is checked and locked before the models load: a refused folder costs nothing
    with output_dir(args.out, args.overwrite) as folder:
        began = time.time()
        if judge_name == "clip":
            from .scoring import load_scorer

            judge = ClipJudge(load_scorer(args.clip, args.device), args.reference_content)
        else:
            from .world.space_eval import load_space_oracles
            from .world.style_judge import load_style_judge

            judge = WorldJudge(load_style_judge(), load_space_oracles())
        style = load_instantstyle(
            args.model,
            ip_adapter=args.ip_adapter,
            weight_name=args.ip_adapter_weight,
            image_encoder=args.image_encoder,
            device=args.device,
            dtype=getattr(torch, args.dtype),
        )
        loaded = time.time() - began
        result = probe(style, tasks, judge, config)
        result.report["settings"]["command"] = "instantstyle probe"
        result.report["timings"]["load_seconds"] = round(loaded, 2)
        result.report["timings"]["total_seconds"] = round(time.time() - began, 2)
        (folder / "grids").mkdir()
        for label, images in result.images.items():
            grid = make_grid(to_pil_images(images), columns=args.images_per_block)
            save_png(grid, folder / "grids" / f"{re.sub(r'[^A-Za-z0-9_.+-]+', '-', label).strip('-')}.png")
        write_json(folder / "probe.json", result.report)
    print(format_table(result.report))
    timings = result.report["timings"]
    print(
        f"{timings['configurations_drawn']} configurations, {timings['images_drawn']} images in "
        f"{timings['total_seconds']:.0f} s (models {timings['load_seconds']:.0f} s); wrote {args.out}/probe.json"
    )
    return 0
