"""The style judge (world/style_judge.py): the shipped embedder retrieves held-out styles; training writes a run."""

import json

import numpy as np

from stylecraft.world import space
from stylecraft.world.style_judge import WEIGHTS, load_style_judge, retrieval_accuracy, train


def test_shipped_judge_retrieves_held_out_styles_far_above_chance():
    assert WEIGHTS.stat().st_size <= 2 * 1024 * 1024
    judge = load_style_judge()
    ids = np.random.default_rng(3).choice(space.HELD_OUT_IDS, size=32, replace=False)
    accuracy = retrieval_accuracy(judge, ids, seed=5)  # chance: 1/32
    assert accuracy >= 0.75, accuracy


def test_training_writes_weights_that_load_and_its_record(tmp_path):
    record = train(tmp_path, styles_per_batch=8, max_minutes=0.01, lr=1e-3, temperature=0.1, seed=0)
    assert record["steps"] >= 1 and set(record["evaluation"]) == {
        space.SEEN,
        *space.HELD_OUT_FAMILIES,
        "held-out, mixed",
    }
    assert json.loads((tmp_path / "training.json").read_text())["config"]["styles_per_batch"] == 8
    judge = load_style_judge(tmp_path / "style_judge.safetensors")
    assert judge.embed(space.render_batch(4, seed=0)[0]).shape == (4, 128)
