"""Render speed of the style space (world/space.py) on one core, against the renderer's 14 named styles.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_space_render.py

Issue #28 asks for at least 1,000 images/s on one core. Each line is the fastest of 8 batches of 1,024 scenes
(each batch a fresh seed, styles at random), so other processes on a shared CPU slow it least; the second number
counts only the CPU time this process got (``time.process_time``), which waiting for a busy CPU does not inflate.
"""

from __future__ import annotations

import time

from stylecraft.world import renderer, space


def main() -> None:
    space.render_batch(512, seed=0)  # warm-up: imports, first allocations
    for name, draw in [
        ("space, seen styles", lambda seed: space.render_batch(1024, seed)),
        ("space, held-out families", lambda seed: space.render_batch(1024, seed, held_out=True)),
        ("renderer, 14 named styles", lambda seed: renderer.render_batch(1024, seed)),
    ]:
        wall, cpu = float("inf"), float("inf")
        for seed in range(1, 9):
            start, start_cpu = time.perf_counter(), time.process_time()
            draw(seed)
            wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
        print(f"{name}: {1024 / wall:,.0f} images/s, {1024 / cpu:,.0f} per CPU second (fastest of 8 batches of 1,024)")


if __name__ == "__main__":
    main()
