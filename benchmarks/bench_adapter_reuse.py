"""Memory of a base model reused for many LoRA samples: what each call leaves behind in it.

    .venv/bin/python benchmarks/bench_adapter_reuse.py              # shapes model, 20 samples, ~15 s
    .venv/bin/python benchmarks/bench_adapter_reuse.py --calls 100

A LoRA lives inside the base model's layers (peft), not in the ``AdaptedTransformer`` wrapper that uses it. The
benchmark trains one LoRA folder (``shapes-lora`` for 2 steps: its values do not matter here), then calls
``stylecraft.sample(muse, ..., adapter=FOLDER)`` ``--calls`` times on one loaded model, as a script or the feedback
page would, and prints how many LoRAs and LoRA parameters the base still holds, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="sample calls with the LoRA folder (default 20)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from peft.tuners.lora import LoraLayer

    from stylecraft import api
    from stylecraft.evaluation import make_task
    from stylecraft.training import load_recipe, train_adapter

    muse = api.load()
    task = make_task("neon glow")
    folder = tempfile.mkdtemp()
    recipe = load_recipe("shapes-lora", steps=2)
    train_adapter(muse, [task.reference], [task.reference_prompt], recipe, folder, progress=False)
    base = sum(p.numel() for name, p in muse.transformer.named_parameters() if "lora_" not in name)
    started = time.perf_counter()
    for seed in range(args.calls):
        api.sample(muse, [task.prompts[0]], adapter=folder, num_images=1, seed=seed, progress=False)
    seconds = time.perf_counter() - started
    loras = {name for m in muse.transformer.modules() if isinstance(m, LoraLayer) for name in m.lora_A}
    lora_parameters = sum(p.numel() for name, p in muse.transformer.named_parameters() if "lora_" in name)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| sample calls | LoRAs left in the base | their parameters | base parameters | peak RSS | time |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.calls} | {len(loras)} | {lora_parameters:,} | {base:,} | {peak:.0f} MB | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
