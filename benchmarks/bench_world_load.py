"""Load time of the shipped shapes-world models, against diffusers' own loader for the same folder.

    .venv/bin/python benchmarks/bench_world_load.py              # 5 alternated repetitions, ~1 min
    .venv/bin/python benchmarks/bench_world_load.py --json runs/bench/world_load.json

Issue #3 asks that loading the shipped weights is offline and takes under 2 s. Each repetition starts fresh Python
processes (so no file or module cache inside the process helps the second load), and each process reports two
times: its imports, and the load itself. The compared loads, alternated within each repetition:

- ``load_muse``: ``stylecraft.muse.load_muse("shapes")`` (transformer, VQ, text encoder, tokenizer, scheduler);
- ``pipeline``: diffusers' ``AmusedPipeline`` built from the same folder's five components, each loaded by its own
  class's ``from_pretrained`` (the folder has no ``model_index.json``, and its transformer and VQ are the shapes
  world's subclasses, which the pipeline cannot name itself);
- ``everything``: ``load_muse("shapes")`` plus the mini CLIP, the oracles and the glyph detector, all that
  ``stylecraft demo`` and the evaluations load.

The ratio is load_muse / pipeline time (medians over the repetitions).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, sys, time
os.environ["HF_HUB_OFFLINE"] = "1"
started = time.perf_counter()
import torch
from stylecraft.muse import load_muse
from stylecraft.world import shapes_clip_dir, shapes_model_dir
from stylecraft.world.oracles import load_glyph_oracle, load_oracles
from stylecraft.world.transformer import WorldUVit2DModel
from stylecraft.world.vq import WorldVQModel
from diffusers import AmusedPipeline, AmusedScheduler
from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPTokenizer
imported = time.perf_counter()
which = sys.argv[1]
if which == "load_muse":
    model = load_muse("shapes")
elif which == "pipeline":
    folder, local = shapes_model_dir(), {"local_files_only": True}
    model = AmusedPipeline(
        transformer=WorldUVit2DModel.from_pretrained(folder / "transformer", **local),
        vqvae=WorldVQModel.from_pretrained(folder / "vqvae", **local),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder", **local),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer", **local),
        scheduler=AmusedScheduler.from_pretrained(folder / "scheduler", **local),
    )
else:
    model = load_muse("shapes")
    clip = CLIPModel.from_pretrained(shapes_clip_dir(), local_files_only=True)
    oracles, glyph = load_oracles(), load_glyph_oracle()
loaded = time.perf_counter()
print(json.dumps({"import_s": imported - started, "load_s": loaded - imported}))
"""

KINDS = ("load_muse", "pipeline", "everything")


def run(kind: str, threads: int) -> dict:
    env = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    times: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for repeat in range(args.repeats):
        order = KINDS if repeat % 2 == 0 else KINDS[::-1]
        for kind in order:
            times[kind].append(run(kind, args.threads))
    result = {
        kind: {
            "load_s": statistics.median(t["load_s"] for t in runs),
            "import_s": statistics.median(t["import_s"] for t in runs),
            "max_load_s": max(t["load_s"] for t in runs),
        }
        for kind, runs in times.items()
    }
    result["ratio_load_muse_to_pipeline"] = result["load_muse"]["load_s"] / result["pipeline"]["load_s"]
    print(f"| load ({args.repeats} fresh processes each, medians) | load | slowest load | imports before it |")
    print("|---|---|---|---|")
    for kind in KINDS:
        r = result[kind]
        print(f"| {kind} | {r['load_s']:.2f} s | {r['max_load_s']:.2f} s | {r['import_s']:.2f} s |")
    print(f"load_muse / pipeline: {result['ratio_load_muse_to_pipeline']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
