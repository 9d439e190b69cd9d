"""Pretrain the shapes world's models on the CPU, each from a JSON recipe (``world/recipes.json``).

    python -m stylecraft.world.pretrain oracles --out runs/world/oracles
    python -m stylecraft.world.pretrain glyph   --out runs/world/glyph     # the two-adapter experiment's detector
    python -m stylecraft.world.pretrain vq      --out runs/world/vq
    python -m stylecraft.world.pretrain clip    --out runs/world/clip
    python -m stylecraft.world.pretrain muse    --out runs/world/muse --vq runs/world/vq --clip runs/world/clip
    python -m stylecraft.world.pretrain sd-vae  --out runs/world/sd-vae   # shapes-sd: docs/shapes-sd.md
    python -m stylecraft.world.pretrain sd-unet --out runs/world/sd-unet --vae runs/world/sd-vae
    python -m stylecraft.world.pretrain ip-adapter --out runs/world/sd-ip-adapter --sd runs/world/sd-unet/shapes-sd
    python -m stylecraft.world.pretrain controlnet --out runs/world/sd-controlnet --sd runs/world/sd-unet/shapes-sd
    python -m stylecraft.world.pretrain ship    --runs runs/world      # copy the results into world/weights/
    python -m stylecraft.world.pretrain ship-sd --runs runs/v2         # shapes-sd + IP-Adapter + ControlNet
    python -m stylecraft.world.pretrain evaluate --images 512          # the shipped VQ and Muse-mini, judged again

Every run streams fresh renders (no data set on disk), uses AdamW with linear warmup + cosine decay, checkpoints
to ``OUT/checkpoint.pt`` (``--resume`` continues from it, the data stream included, since batch ``i`` is seeded
by ``(seed, i)``), and writes ``OUT/training.json``: the resolved recipe, the metrics and the wall time.
Evaluation uses fixed seeds (``EVAL_SEED``) disjoint from training seeds.

This module holds what every model shares (the recipe, the loop, the command line); each model's training and
evaluation live in their own module: ``train_judges`` (oracles, glyph detector), ``train_vq``, ``train_clip``,
``train_muse``, ``train_sd`` (shapes-sd's VAE and UNet), ``train_sd_adapters`` (its IP-Adapter and ControlNet), and
``ship``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import StylecraftError
from ..io import write_json
from . import WEIGHTS
from .oracles import Oracles, load_oracles

RECIPES = Path(__file__).parent / "recipes.json"
LINEAGE = "training.earlier-stages.json"  # beside a Muse's training.json: the records of the stages it continued
EVAL_SEED = 10_000_019  # evaluation renders; training streams use the recipe's seed (small integers)
PRECISIONS = ("fp32", "bf16")


@dataclass
class Recipe:
    """Settings shared by every model; each model's section of recipes.json fills these and ``model``."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate (after warmup)
    warmup: int = 100  # linear warmup steps, then cosine decay to 0
    weight_decay: float = 0.01
    seed: int = 0  # training stream and init seed
    threads: int = 2  # torch CPU threads (this machine has 2 shared cores)
    log_every: int = 50
    checkpoint_every: int = 500
    max_minutes: float = 0.0  # wall-clock budget (0: none); the lr schedule follows max(step, time) progress
    # "bf16": forward and loss under CPU bfloat16 autocast, conv weights channels-last (weights and optimizer stay
    # float32); about 2.5x faster VQ steps on a CPU with AMX (benchmarks/bench_world_precision.py). "fp32": plain.
    precision: str = "fp32"
    eval_images: int = 1024  # fresh renders per evaluation
    model: dict = field(default_factory=dict)  # architecture keyword arguments
    extra: dict = field(default_factory=dict)  # model-specific settings (see each trainer)


def load_recipe(name: str, path: str | Path | None = None, overrides: dict | None = None) -> Recipe:
    """The ``name`` section of the recipe file, with ``overrides`` (e.g. from the command line) applied."""
    recipes = json.loads(Path(path or RECIPES).read_text())
    if name not in recipes:
        raise ValueError(f"recipe file {path or RECIPES} has no {name!r} section; it has {sorted(recipes)}")
    values = {**recipes[name], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    known = {f.name for f in fields(Recipe)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown recipe fields {sorted(unknown)} for {name!r}; known fields: {sorted(known)}")
    recipe = Recipe(**values)
    if recipe.precision not in PRECISIONS:
        raise StylecraftError(
            f"recipe {name!r}: precision must be one of {', '.join(PRECISIONS)}, got {recipe.precision!r}"
        )
    return recipe


def learning_rate(step: int, recipe: Recipe, minutes: float = 0.0) -> float:
    """Linear warmup to ``recipe.lr`` then cosine decay to zero at ``recipe.steps`` or at ``recipe.max_minutes``,
    whichever comes first (on a shared CPU the time budget is the binding one)."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    if recipe.max_minutes:
        progress = max(progress, minutes / recipe.max_minutes)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float [n, 3, H, W] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def train_loop(
    recipe: Recipe,
    out: Path,
    modules: dict[str, torch.nn.Module],
    params,
    step_fn,
    resume: bool,
    state: dict | None = None,
) -> tuple[float, list[dict]]:
    """The loop every model shares: lr schedule -> ``step_fn(step)`` (returns the loss and logs) -> backward ->
    clip -> step, with periodic logs and checkpoints. Returns (wall seconds of this and earlier runs, log)."""
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))
    start, wall, history = 0, 0.0, []
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)  # tensors, numbers, lists and dicts only: no unpickling
        for name, module in modules.items():
            module.load_state_dict(saved["modules"][name])
        optimizer.load_state_dict(saved["optimizer"])
        start, wall, history = saved["step"], saved["wall"], saved["history"]
        if state is not None:
            state.update(saved.get("state", {}))
        print(f"resumed from step {start}", flush=True)
    began = time.time()

    def save(step: int) -> None:
        torch.save(
            {
                "modules": {k: m.state_dict() for k, m in modules.items()},
                "optimizer": optimizer.state_dict(),
                "step": step,
                "wall": wall + time.time() - began,
                "history": history,
                "state": state or {},
            },
            checkpoint,
        )

    bf16 = recipe.precision == "bf16"
    for module in modules.values():
        module.train()
        if bf16:  # oneDNN's bfloat16 convolutions are fastest on channels-last weights (a no-op for other layers)
            module.to(memory_format=torch.channels_last)
    step = start
    for step in range(start, recipe.steps):
        minutes = (wall + time.time() - began) / 60
        if recipe.max_minutes and minutes >= recipe.max_minutes:
            print(f"time budget of {recipe.max_minutes} min reached at step {step}", flush=True)
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe, minutes)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, logs = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % recipe.log_every == 0 or step == recipe.steps - 1:
            entry = {
                "step": step,
                "loss": round(loss.item(), 4),
                "lr": group["lr"],
                "seconds": round(wall + time.time() - began, 1),
                **logs,
            }
            history.append(entry)
            print(json.dumps(entry), flush=True)
        if (step + 1) % recipe.checkpoint_every == 0:
            save(step + 1)
    else:
        step = recipe.steps
    save(step)
    history.append({"step": step, "finished": True, "seconds": round(wall + time.time() - began, 1)})
    for module in modules.values():
        module.eval()
        module.to(memory_format=torch.contiguous_format)  # saved weights are plain contiguous tensors
    return wall + time.time() - began, history


def evaluation_oracles(path: Path) -> Oracles:
    """Oracles from ``path`` when that file exists (a fresh run), else the shipped ones."""
    return load_oracles(path if path.is_file() else None)


def finish(out: Path, name: str, recipe: Recipe, wall: float, history: list[dict], metrics: dict) -> None:
    report = {
        "model": name,
        "recipe": asdict(recipe),
        "metrics": metrics,
        "train_wall_seconds": round(wall, 1),
        "history": history,
    }
    write_json(out / "training.json", report)
    print(json.dumps({"metrics": metrics, "train_wall_seconds": round(wall, 1)}, indent=2), flush=True)


def build_parser(prog: str = "python -m stylecraft.world.pretrain") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    trained = ["oracles", "glyph", "vq", "clip", "muse", "sd-vae", "sd-unet", "ip-adapter", "controlnet"]
    parser.add_argument("model", choices=[*trained, "ship", "ship-sd", "evaluate"])
    parser.add_argument(
        "--out", type=Path, help="run folder (weights, checkpoint.pt, training.json); for evaluate, evaluation.json's"
    )
    parser.add_argument("--section", help="recipe section to use (default: the model's name)")
    parser.add_argument("--recipe", type=Path, help=f"recipe JSON (default {RECIPES.name} in the package)")
    parser.add_argument("--steps", type=int, help="override the recipe's step count")
    parser.add_argument("--max-minutes", type=float, help="override the recipe's wall-clock budget")
    parser.add_argument("--threads", type=int, help="override the recipe's torch CPU threads")
    parser.add_argument("--seed", type=int, help="override the recipe's seed (e.g. a second run of one recipe)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="override the recipe's precision (bf16: autocast, channels-last convs)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--vq", type=Path, default=Path("runs/world/vq"), help="VQ run folder (for muse)")
    parser.add_argument(
        "--clip",
        type=Path,
        help="CLIP run folder: for muse, its text tower (default runs/world/clip); for ship, the one to ship "
        "(default RUNS/clip); for sd-unet's text encoder and ip-adapter's image encoder (default: the shipped CLIP)",
    )
    parser.add_argument("--vae", type=Path, default=Path("runs/world/sd-vae"), help="sd-vae run folder (for sd-unet)")
    parser.add_argument(
        "--sd",
        type=Path,
        default=Path("runs/world/sd-unet/shapes-sd"),
        help="shapes-sd folder to build on (for ip-adapter and controlnet)",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/world"), help="folder of runs to ship")
    parser.add_argument(
        "--muse",
        type=Path,
        help="Muse run folder to ship (default RUNS/muse), e.g. a later stage; for evaluate, a run or Muse-mini "
        "folder (default: the shipped one)",
    )
    parser.add_argument(
        "--presets", type=Path, help="ship-sd: JSON of InstantStyle block presets (e.g. a probe's probe.json)"
    )
    parser.add_argument("--only", nargs="+", choices=["oracles", "glyph", "clip", "muse"], help="ship just these")
    parser.add_argument(
        "--images", type=int, default=128, help="evaluate: renders per style for the VQ, prompts per group for Muse"
    )
    parser.add_argument(
        "--oracles",
        type=Path,
        default=Path("runs/world/oracles/oracles.safetensors"),
        help="oracle weights for evaluation (default: a fresh run's, else the shipped ones)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    try:
        _run(parser, parser.parse_args(argv))
    except StylecraftError as error:
        raise SystemExit(f"error: {error}") from None


def run_cli(args: argparse.Namespace) -> int:
    """``stylecraft world pretrain ...``: this module's command line (errors reach stylecraft's one-line handler)."""
    if args.action == "styles":  # stylecraft world styles: a sample of the style space (world/space.py)
        from .space import run_cli as run_styles

        return run_styles(args)
    parser = build_parser("stylecraft world pretrain")
    _run(parser, parser.parse_args(args.args))
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    # one module per model trained (imported here: each imports this module's loop and recipe)
    from .ship import ship, ship_sd
    from .train_clip import train_clip
    from .train_judges import train_glyph_oracle, train_oracles
    from .train_muse import evaluate_models, train_muse
    from .train_sd import train_sd_unet, train_sd_vae
    from .train_sd_adapters import train_controlnet, train_ip_adapter
    from .train_vq import train_vq

    if args.model == "ship":
        ship(args.runs, args.vq, args.muse, args.only, args.clip)
        return
    if args.model == "ship-sd":  # shapes-sd and its add-ons, from runs/v2 (docs/shapes-sd.md)
        presets = json.loads(args.presets.read_text()) if args.presets else None
        print(f"shipped {ship_sd(args.runs, presets.get('block_presets', presets) if presets else None)}")
        return
    if args.model == "evaluate":  # a model's VQ and Muse-mini again, judged by --oracles (default: the shipped)
        if args.images < 1:
            raise StylecraftError(
                f"--images must be at least 1 (renders per style, prompts per group), got {args.images}"
            )
        model = args.muse or WEIGHTS / "muse"
        model = model / "muse" if (model / "muse").is_dir() else model
        torch.set_num_threads(args.threads or 2)
        result = evaluate_models(model, evaluation_oracles(args.oracles), args.images)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "evaluation.json", result)
        print(json.dumps({"vq": result["vq"]["mean_reconstruction"], "muse": result["muse"]}))
        return
    if args.out is None:
        parser.error("--out is required")
    recipe = load_recipe(
        args.section or args.model,
        args.recipe,
        {
            "steps": args.steps,
            "threads": args.threads,
            "max_minutes": args.max_minutes,
            "seed": args.seed,
            "precision": args.precision,
        },
    )
    torch.set_num_threads(recipe.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model == "oracles":
        train_oracles(recipe, args.out, args.resume)
        return
    if args.model == "glyph":
        train_glyph_oracle(recipe, args.out, args.resume)
        return
    if args.model == "vq":
        train_vq(recipe, args.out, args.resume, args.oracles)
    elif args.model == "clip":
        train_clip(recipe, args.out, args.resume)
    elif args.model == "sd-vae":
        train_sd_vae(recipe, args.out, args.resume, args.oracles)
    elif args.model == "sd-unet":
        train_sd_unet(recipe, args.out, args.resume, args.vae, args.clip, args.oracles)
    elif args.model == "ip-adapter":
        train_ip_adapter(recipe, args.out, args.resume, args.sd, args.clip, args.oracles)
    elif args.model == "controlnet":
        train_controlnet(recipe, args.out, args.resume, args.sd, args.oracles)
    else:
        train_muse(recipe, args.out, args.resume, args.vq, args.clip or Path("runs/world/clip"), args.oracles)


if __name__ == "__main__":
    main()
