"""A style judge for the style space: a small CNN that embeds an image's style, not its content (issue #28, part 3).

It needs no class per style, so it judges styles it never saw: given one reference, the candidate whose embedding is
nearest (cosine) is its style. Trained contrastively on seen styles only: in a batch of styles, two renders of each
style with other content are positives and every other style's renders are negatives (InfoNCE, as in SimCLR and
CLIP, both directions). Its score is top-1 retrieval over held-out families: one render per style as reference,
another with other content as candidate, ``space`` styles at a time.

    python -m stylecraft.world.style_judge --out runs/world/style-judge --max-minutes 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from . import space
from .oracles import as_model_input
from .renderer import sample_scenes

WEIGHTS = Path(__file__).parent / "weights" / "style_judge.safetensors"


class StyleEmbedder(nn.Module):
    """Conv trunk (64→32→16→8 px) pooled to each channel's mean and spread over the image, so the embedding keeps
    texture statistics and drops where things are; then a linear map to a unit vector."""

    def __init__(self, width: int = 32, dim: int = 128):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            nn.ReLU(),  # 32×32
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),  # 16×16
            nn.Conv2d(2 * width, 3 * width, 3, stride=2, padding=1),
            nn.ReLU(),  # 8×8
            nn.Conv2d(3 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.project = nn.Linear(8 * width, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [n, 3, 64, 64] in [0, 1] -> unit style embeddings [n, dim]."""
        features = self.trunk(images * 2 - 1).flatten(2)  # [n, channels, 64 positions]
        pooled = torch.cat([features.mean(-1), features.std(-1)], dim=1)  # [n, 2 * channels]
        return F.normalize(self.project(pooled), dim=-1)

    @torch.no_grad()
    def embed(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings [n, dim] of uint8 [n, H, W, 3] arrays or float [n, 3, H, W] tensors in [0, 1]."""
        images = as_model_input(images)
        self.eval()
        return torch.cat([self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def load_style_judge(path: str | Path | None = None) -> StyleEmbedder:
    """The shipped style judge (or weights at ``path``), CPU, eval mode."""
    model = StyleEmbedder()
    model.load_state_dict(load_file(str(path or WEIGHTS)))
    return model.eval()


def pair_renders(style_ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two renders per style [n, 64, 64, 3] each, of independently drawn content (scenes) and pattern phases."""
    rng = np.random.default_rng(seed)
    first = space.render_styles(sample_scenes(len(style_ids), rng), style_ids, rng)
    return first, space.render_styles(sample_scenes(len(style_ids), rng), style_ids, rng)


def retrieval_accuracy(model: StyleEmbedder, style_ids: np.ndarray, seed: int) -> float:
    """Top-1 retrieval: each style's reference render finds its own style's candidate (other content) among the
    candidates of all ``style_ids``; chance is 1 / len(style_ids)."""
    references, candidates = pair_renders(style_ids, seed)
    similarity = model.embed(references) @ model.embed(candidates).T  # [n, n] cosine
    return float((similarity.argmax(dim=1) == torch.arange(len(style_ids))).float().mean())


def evaluate(model: StyleEmbedder, candidates: int = 50, seed: int = 0) -> dict[str, float]:
    """Retrieval accuracy among ``candidates`` styles of each held-out family (the same family: they share its
    defining value), among as many seen styles, and among held-out styles of all families mixed."""
    rng = np.random.default_rng(seed)
    result = {}
    for k, name in enumerate([space.SEEN, *space.HELD_OUT_FAMILIES]):
        ids = rng.choice(space.family_ids(name), size=candidates, replace=False)
        result[name] = retrieval_accuracy(model, ids, seed=10_000 + k)
    mixed = rng.choice(space.HELD_OUT_IDS, size=candidates, replace=False)
    result["held-out, mixed"] = retrieval_accuracy(model, mixed, seed=20_000)
    return result


def train(out: Path, styles_per_batch: int, max_minutes: float, lr: float, temperature: float, seed: int) -> dict:
    """Train on seen styles until ``max_minutes`` of wall time; write weights and training.json into ``out``."""
    torch.manual_seed(seed)
    model = StyleEmbedder()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    started, step, history = time.time(), 0, []
    model.train()
    while time.time() - started < 60 * max_minutes:
        progress = (time.time() - started) / (60 * max_minutes)
        for group in optimizer.param_groups:  # cosine decay over the time budget
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * progress))
        ids = space.sample_styles(styles_per_batch, np.random.default_rng([seed, step]))  # seen styles only
        first, second = pair_renders(ids, seed=seed * 1_000_003 + step)
        a, b = model(as_model_input(first)), model(as_model_input(second))  # [batch, dim] each
        logits = a @ b.T / temperature  # [batch, batch]: the diagonal holds the positives
        same = torch.from_numpy(ids[:, None] == ids[None, :])  # a style drawn twice is no negative of itself
        logits = logits.masked_fill(same & ~torch.eye(len(ids), dtype=torch.bool), float("-inf"))
        target = torch.arange(len(ids))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2  # InfoNCE, both ways
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            history.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - started)})
            print(history[-1], flush=True)
        step += 1
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "style_judge.safetensors"))
    record = {
        "config": {
            "styles_per_batch": styles_per_batch,
            "max_minutes": max_minutes,
            "lr": lr,
            "temperature": temperature,
            "seed": seed,
        },
        "steps": step,
        "wall_seconds": round(time.time() - started),
        "evaluation": evaluate(model),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stylecraft.world.style_judge", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run folder (weights and training.json)")
    parser.add_argument("--styles-per-batch", type=int, default=64, help="styles per step, two renders each")
    parser.add_argument("--max-minutes", type=float, default=10, help="wall-clock training budget (default 10)")
    parser.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate, cosine over the budget")
    parser.add_argument("--temperature", type=float, default=0.1, help="InfoNCE temperature (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    record = train(args.out, args.styles_per_batch, args.max_minutes, args.lr, args.temperature, args.seed)
    print(json.dumps({"steps": record["steps"], "evaluation": record["evaluation"]}))


if __name__ == "__main__":
    main()
