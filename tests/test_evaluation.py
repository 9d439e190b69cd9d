"""The shapes-world measurements: prompts, oracle metrics and leakage, on ground-truth renders."""

import math

import pytest
from PIL import Image

from stylecraft.errors import StylecraftError
from stylecraft.evaluation import (
    FEEDBACK_ROWS,
    make_task,
    markdown_table,
    mean_over_styles,
    measure,
    run_feedback_table,
    standard_errors,
)
from stylecraft.world import parse_caption, render_prompts
from stylecraft.world.oracles import load_oracles


def test_task_prompts_avoid_the_reference_content():
    task = make_task("neon glow", shape="circle", colour="red", num_prompts=8)
    assert task.reference_prompt == "a large red circle in neon glow style"
    assert len(set(task.prompts)) == 8
    for prompt in task.prompts:
        parsed = parse_caption(prompt)
        assert parsed["shape"] != "circle" and parsed["colour"] != "red" and parsed["style"] == "neon glow"


def test_measure_on_ground_truth_and_on_leaking_images():
    task = make_task("pixel art", num_prompts=8)
    oracles = load_oracles()
    truth = [Image.fromarray(a) for a in render_prompts(task.prompts, seed=5)]
    good = measure(truth, task.prompts, task, oracles)
    assert good["style_accuracy"] >= 0.85 and good["content_accuracy"] >= 0.85 and good["leakage"] <= 0.15
    assert good["all_correct"] >= 0.75
    # images that copy the reference (red circles) whatever the prompt asked: all leakage, no content
    copies = [Image.fromarray(a) for a in render_prompts([task.reference_prompt] * 8, seed=6)]
    bad = measure(copies, task.prompts, task, oracles)
    assert bad["leakage"] >= 0.85 and bad["content_accuracy"] <= 0.15


def test_markdown_table():
    lines = markdown_table({"a": {"x": 0.5}}, [("x", "X", "{:.2f}")])
    assert lines == ["| method | X |", "|---|---|", "| a | 0.50 |"]
    assert markdown_table({"a": {"x": 0.5, "x_se": 0.04}}, [("x", "X", "{:.2f}")])[2] == "| a | 0.50 ± 0.04 |"


def test_standard_errors_of_rates_and_of_their_mean_over_styles():
    errors = standard_errors({"style_accuracy": 0.5, "leakage": 0.0, "text_score": 0.8, "num_images": 100})
    assert errors == {"style_accuracy_se": 0.05, "leakage_se": 0.0}  # sqrt(.5 * .5 / 100); scores have none
    blocks = {
        style: {
            "methods": {
                "m": {"style_accuracy": p, "num_images": 64, **standard_errors({"style_accuracy": p, "num_images": 64})}
            }
        }
        for style, p in (("a", 0.5), ("b", 0.25))
    }
    mean = mean_over_styles(blocks, "methods")["m"]
    assert mean["style_accuracy"] == 0.375
    # the mean of two independent rates: sqrt(se_a² + se_b²) / 2, not the mean of the two errors
    expected = math.sqrt(0.25 / 64 + 0.1875 / 64) / 2
    assert math.isclose(mean["style_accuracy_se"], expected) and mean["style_accuracy_se"] < (0.0625 + 0.0541) / 2


def test_feedback_table_reports_what_each_round_2_trained_on(tmp_path, monkeypatch):
    """The eval-feedback harness end to end on the shipped shapes model, a few steps: rows, picks, and the
    oracles' view of each Round-2 training set."""
    monkeypatch.setattr("stylecraft.evaluation.LAMBDA_A_SWEEP", (0.0, 1.0))  # two points of the sweep are enough
    results = run_feedback_table(
        tmp_path / "fb", styles=("neon glow",), per_prompt=2, num_images=1, round1_steps=2, round2_steps=2, repeats=2
    )
    block = results["styles"]["neon glow"]
    assert list(block["methods"]) == list(FEEDBACK_ROWS)
    # two repeats: candidates drawn with seeds 0 and 1, so two sets of picks, and Round 2 rows pool both
    first, second = block["repeats"]
    assert first["picks"] == block["picks"] and (tmp_path / "fb" / "neon-glow" / "round2-seed1" / "candidates").is_dir()
    assert block["methods"]["Round 1"]["num_images"] == 8  # 8 prompts × 1 image
    assert (
        block["methods"]["Round 2 random"]["num_images"] == 16 == 2 * second["methods"]["Round 2 random"]["num_images"]
    )
    pooled = block["methods"]["Round 2 CLIP feedback"]["style_accuracy"]
    each = [run["methods"]["Round 2 CLIP feedback"]["style_accuracy"] for run in block["repeats"]]
    assert abs(pooled - sum(each) / 2) < 1e-9
    sets = block["training_sets"]
    assert list(sets) == ["all candidates", *FEEDBACK_ROWS[1:]]
    assert sets["all candidates"]["num_images"] == 2 * len(block["picks"]["Round 2 CLIP feedback"])
    # the oracles pick a right candidate for every prompt that has one: no other selection has more right picks
    oracle = sets["Round 2 oracle-picked (human stand-in)"]["all_correct"]
    assert oracle >= sets["Round 2 CLIP feedback"]["all_correct"] and oracle >= sets["Round 2 random"]["all_correct"]
    assert results["training_sets_mean"]["all candidates"] == {
        key: sets["all candidates"][key] for key in results["training_sets_mean"]["all candidates"]
    }
    assert list(block["lambda_a_sweep"]["Round 1"]) == ["0.0", "1.0"]
    report = (tmp_path / "fb" / "report.md").read_text()
    assert "What each Round 2 trained on" in report and (tmp_path / "fb" / "style_vs_lambda_a.png").is_file()
    assert "| repeat 1 (candidate seed 1): Round 2 random |" in report
    with pytest.raises(StylecraftError, match="--repeats must be at least 1"):
        run_feedback_table(tmp_path / "fb0", styles=("neon glow",), repeats=0)


def test_oracle_picks_skip_a_prompt_with_no_right_candidate(tmp_path):
    """The human stand-in picks, per prompt, a candidate the oracles judge right, and none where every candidate is
    wrong (as a careful person would); with no right candidate anywhere it falls back to the best text score."""
    import json

    from stylecraft.evaluation import oracle_pick
    from stylecraft.world import render_prompts

    task = make_task("pixel art")
    prompts = ["a large blue square in pixel art style", "a large green star in pixel art style"]
    drawn = {  # candidates as renders: prompt 0 has one right candidate, prompt 1 only wrong ones
        "p000_k000.png": ("a large blue square in flat color style", 0.9),  # wrong style, best text score
        "p000_k001.png": ("a large blue square in pixel art style", 0.5),  # right
        "p001_k000.png": ("a large red circle in pixel art style", 0.8),  # the reference's content
        "p001_k001.png": ("a large green star in flat color style", 0.7),  # wrong style
    }
    (tmp_path / "candidates").mkdir()
    scores = {}
    for (file, (_, text_score)), image in zip(
        drawn.items(), render_prompts([w for w, _ in drawn.values()], seed=3), strict=True
    ):
        Image.fromarray(image).save(tmp_path / "candidates" / file)
        index = int(file[1:4])
        scores[file] = {"prompt_index": index, "prompt": prompts[index], "text_score": text_score, "style_score": 0.0}
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    (tmp_path / "round.json").write_text(json.dumps({"prompts": prompts, "per_prompt": 2}))
    assert oracle_pick(tmp_path, task, load_oracles()) == ["p000_k001.png"]
    # now no prompt has a right candidate: the best text score per prompt
    wrong = render_prompts(["a large yellow moon in flat color style"], seed=3)[0]
    Image.fromarray(wrong).save(tmp_path / "candidates" / "p000_k001.png")
    assert oracle_pick(tmp_path, task, load_oracles()) == ["p000_k000.png", "p001_k000.png"]


def test_an_unknown_style_is_one_error_line_naming_the_styles(tmp_path, capsys):
    from stylecraft.cli import main

    assert main(["eval", "--style", "nope", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown style 'nope'; pick one of") and "neon glow" in err  # not "error (ValueError)"
    assert not (tmp_path / "t").exists()
