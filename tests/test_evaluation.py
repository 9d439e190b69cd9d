"""The shapes-world measurements: prompts, oracle metrics and leakage, on ground-truth renders."""

from PIL import Image

from stylecraft.evaluation import make_task, markdown_table, measure
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
    # images that copy the reference (red circles) whatever the prompt asked: all leakage, no content
    copies = [Image.fromarray(a) for a in render_prompts([task.reference_prompt] * 8, seed=6)]
    bad = measure(copies, task.prompts, task, oracles)
    assert bad["leakage"] >= 0.85 and bad["content_accuracy"] <= 0.15


def test_markdown_table():
    lines = markdown_table({"a": {"x": 0.5}}, [("x", "X", "{:.2f}")])
    assert lines == ["| method | X |", "|---|---|", "| a | 0.50 |"]
