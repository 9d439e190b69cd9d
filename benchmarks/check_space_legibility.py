"""Can shape and colour be read in every held-out family of the style space? (issue #28: the oracles must reach
97 % there.) Trains the oracles' CNN on seen styles only, for shape and colour, then reads fresh renders of each
family and prints accuracy per family and the factor values with the most errors.

    OMP_NUM_THREADS=2 python benchmarks/check_space_legibility.py --steps 1500

Not a bench_* file: it trains for minutes, so ``make bench`` leaves it out.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from stylecraft.world import space
from stylecraft.world.oracles import Oracles, as_model_input
from stylecraft.world.renderer import sample_scenes


def family_batch(name: str, n: int, seed: int):
    """``n`` scenes in random styles of one family (``space.SEEN`` for the seen styles), rendered."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, rng)
    members = space.family_ids(name)
    ids = members[rng.integers(len(members), size=n)]
    return space.render_styles(scenes, ids, rng), scenes, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--batch", type=int, default=64, help="renders per step (default 64)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate, cosine decay (default 2e-3)")
    parser.add_argument("--images", type=int, default=256, help="evaluation renders per family (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    model = Oracles()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    started = time.time()
    model.train()
    for step in range(args.steps):
        images, scenes, _ = space.render_batch(args.batch, seed=1_000_000 + step)  # seen styles only
        logits = model(as_model_input(images))
        loss = F.cross_entropy(logits["shape"], torch.from_numpy(scenes.shape)) + F.cross_entropy(
            logits["colour"], torch.from_numpy(scenes.colour)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.time() - started:.0f} s)", flush=True)

    errors, totals = Counter(), Counter()
    print(f"\n{'family':<20} shape  colour  ({args.images} fresh renders each)")
    for k, name in enumerate([space.SEEN, *space.HELD_OUT_FAMILIES]):
        images, scenes, ids = family_batch(name, args.images, seed=k)
        predicted = model.predict(images)
        wrong = (predicted["shape"] != scenes.shape) | (predicted["colour"] != scenes.colour)
        print(
            f"{name:<20} {(predicted['shape'] == scenes.shape).mean():.3f}  "
            f"{(predicted['colour'] == scenes.colour).mean():.3f}"
        )
        for i, bad in zip(ids, wrong, strict=True):
            for factor, value in space.factors(i).items():
                totals[factor, value] += 1
                errors[factor, value] += int(bad)
    rates = sorted(((errors[key] / totals[key], key) for key in totals), reverse=True)[:8]
    print("most errors (shape or colour wrong), by factor value:", ", ".join(f"{v} {f} {r:.3f}" for r, (f, v) in rates))
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
