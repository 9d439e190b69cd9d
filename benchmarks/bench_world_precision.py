"""Shapes-world training steps in float32 against the recipes' ``precision: "bf16"``, side by side in one run.

    .venv/bin/python benchmarks/bench_world_precision.py                  # VQ, oracles, glyph; ~4 min
    .venv/bin/python benchmarks/bench_world_precision.py --models vq --steps 40 --repeats 3

Each model trains through ``stylecraft.world.pretrain`` itself (its recipe section cut to ``--steps`` steps, the
VQ from the shipped one, as ``vq-continue``), so a step is everything a real run does: render the batch, forward,
loss, backward, clip, AdamW. The two precisions alternate within each repetition (order reversed every other
one). A run's time per step is read off its own ``training.json`` history, from step 5 to its last step (the first
steps allocate and warm up). Ratios are fp32 time / bf16 time per repetition, then the median: above 1, bf16 is
faster. Speed only: what bf16 does to a trained model is measured by training it (docs/world.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

SECTIONS = {"vq": "vq-continue", "oracles": "oracles", "glyph": "glyph"}
WARM = 5


def seconds_per_step(out: Path) -> float:
    history = [h for h in json.loads((out / "training.json").read_text())["history"] if "loss" in h]
    first, last = history[WARM], history[-1]
    return (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--steps", type=int, default=30, help="steps per run (default 30)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every timing here")
    args = parser.parse_args()

    from stylecraft.world.pretrain import RECIPES
    from stylecraft.world.pretrain import main as pretrain

    folder = Path(tempfile.mkdtemp())
    recipes = json.loads(RECIPES.read_text())
    for section in SECTIONS.values():
        recipes[section].update(steps=args.steps, log_every=1, checkpoint_every=10**6, eval_images=1, max_minutes=0)
    recipes["vq-continue"]["extra"]["init"] = "shapes"
    recipe_file = folder / "recipes.json"
    recipe_file.write_text(json.dumps(recipes))

    raw: dict = {}
    print("| model | batch | fp32 s/step | bf16 s/step | fp32 / bf16 |")
    print("|---|---|---|---|---|")
    for model in args.models:
        section, times = SECTIONS[model], {"fp32": [], "bf16": []}
        for repeat in range(args.repeats):
            order = ("fp32", "bf16") if repeat % 2 == 0 else ("bf16", "fp32")
            for precision in order:
                out = folder / f"{model}-{precision}-{repeat}"
                command = [model, "--section", section, "--recipe", str(recipe_file), "--out", str(out)]
                pretrain([*command, "--threads", str(args.threads), "--precision", precision])
                times[precision].append(seconds_per_step(out))
        ratio = statistics.median(f / b for f, b in zip(times["fp32"], times["bf16"], strict=True))
        fp32, bf16 = (statistics.median(times[p]) for p in ("fp32", "bf16"))
        raw[model] = {**times, "ratio": ratio}
        print(f"| {model} | {recipes[section]['batch_size']} | {fp32:.3f} | {bf16:.3f} | **{ratio:.2f}** |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
