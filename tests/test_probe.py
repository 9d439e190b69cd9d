"""stylecraft instantstyle probe (probe.py) on a tiny random SD 1.5-layout pipeline with a random IP-Adapter: rows for
every block key, paired images, the recommendation rule, the world judge's parity with space_eval, the CLI."""

import json

import numpy as np
import pytest
import test_world_sd
import torch

from stylecraft.errors import StylecraftError
from stylecraft.instantstyle import load_instantstyle, valid_block_keys
from stylecraft.probe import (
    ProbeConfig,
    Prober,
    Run,
    WorldJudge,
    build_parser,
    compare,
    effects,
    probe,
    recommend,
    run_cli,
    verdict,
    whole_blocks,
    world_tasks,
)
from stylecraft.random_sd import build_tiny_pipeline, save_tiny_ip_adapter

FAST = ProbeConfig(images_per_block=2, steps=2)
shapes_sd = test_world_sd.shapes_sd  # its module fixture: a tiny shapes-sd trained 3 steps a stage


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, clip_tokenizer):
    """A tiny random SD 1.5-layout pipeline and IP-Adapter on disk: (model folder, IP-Adapter folder)."""
    root = tmp_path_factory.mktemp("probe")
    pipe = build_tiny_pipeline("tiny-sd15", clip_tokenizer)
    pipe.save_pretrained(root / "model")
    save_tiny_ip_adapter(root / "ip", pipe.unet)
    return root / "model", root / "ip"


@pytest.fixture(scope="module")
def style(folders):
    return load_instantstyle(folders[0], ip_adapter=folders[1], weight_name="ip-adapter.safetensors")


@pytest.fixture(scope="module")
def world_judge():
    from stylecraft.world.oracles import load_oracles
    from stylecraft.world.style_judge import load_style_judge

    return WorldJudge(load_style_judge(), load_oracles())


@pytest.fixture(scope="module")
def tasks():
    return world_tasks(1, FAST.images_per_block)


def test_rows_cover_every_block_key_and_the_recommendation_is_made_of_them(style, tasks, world_judge):
    result = probe(style, tasks, world_judge, FAST)
    report = json.loads(json.dumps(result.report))  # all of it is JSON
    valid = valid_block_keys(style.pipe.unet)
    assert [row["block"] for row in report["rows"]] == valid and "up_blocks.1.attentions.1" in valid
    assert set(report["recommendation"]["style"]) <= set(valid) and report["recommendation"]["style"]
    assert set(report["recommendation"]["layout"]) <= set(valid)
    evaluation = report["evaluation"]
    assert evaluation["recommended"]["blocks"] == report["recommendation"]["style"]
    [paper] = evaluation["presets"]  # the folder declares no presets of its own
    assert paper["name"] == "sd15 style" and paper["blocks"] == ["up_blocks.1"]  # the SD 1.5 preset
    assert paper["comparison"]["outcome"] in ("beats", "equals", "loses to")
    assert report["block_presets"]["style"] == report["recommendation"]["style"]
    # whole blocks of one attention draw nothing new: 17 keys, 13 distinct processor sets, plus off and all
    assert report["timings"]["configurations_drawn"] <= 15 + 1
    assert result.images["none"].shape == (2, 3, 32, 32) and set(result.images) >= {"none", "all", *valid}


def test_a_declared_preset_is_compared_too_and_probe_json_declares_the_recommendation(
    folders, tasks, world_judge, tmp_path
):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(folders[0], model)

    def declare(presets: dict) -> None:
        index = json.loads((model / "model_index.json").read_text())
        (model / "model_index.json").write_text(json.dumps({**index, "_stylecraft": {"block_presets": presets}}))

    def load():
        return load_instantstyle(model, ip_adapter=folders[1], weight_name="ip-adapter.safetensors")

    declare({"style": ["down_blocks.0"]})
    report = probe(load(), tasks, world_judge, FAST).report
    presets = report["evaluation"]["presets"]
    assert [(p["name"], p["blocks"]) for p in presets] == [
        ("sd15 style", ["up_blocks.1"]),
        ("sd15 style (declared)", ["down_blocks.0"]),
    ]
    declare(report["block_presets"])  # what `world pretrain ship-sd --presets probe.json` writes
    style = load()
    assert style.block_presets["style"] == report["recommendation"]["style"]
    assert (
        style.block_presets["style+layout"][: len(report["recommendation"]["style"])]
        == report["recommendation"]["style"]
    )


def test_the_baseline_has_no_gain_against_itself_and_draws_the_same_images_again(style, tasks, world_judge):
    first = Prober(style, tasks, world_judge, FAST).run([])
    second = Prober(style, tasks, world_judge, FAST).run([])  # a fresh prober draws again: same seed, same images
    assert torch.equal(first.images, second.images)
    assert effects(second, first) == {"style_gain": 0.0, "content_loss": 0.0, "leakage": 0.0}
    assert compare(first, second) == {"difference": 0.0, "stderr": 0.0, "outcome": "equals"}


def test_a_block_changes_the_images_only_through_its_ip_adapter_processors(style, tasks, world_judge):
    prober = Prober(style, tasks, world_judge, FAST)
    baseline = prober.run([])
    attentions = [key for key in valid_block_keys(style.pipe.unet) if ".attentions." in key]
    for key in attentions:
        assert not torch.equal(prober.run([key]).images, baseline.images), key
    # a block with one attention turns on the same processors: one drawing serves both
    assert prober.run(["mid_block"]) is prober.run(["mid_block.attentions.0"])
    # at scale 0 the processors are skipped, so no block changes anything
    off = Prober(style, tasks, world_judge, ProbeConfig(images_per_block=2, steps=2, scale=0.0))
    for key in ("down_blocks.0", "up_blocks.1.attentions.1"):
        assert torch.equal(off.run([key]).images, baseline.images), key


def test_world_judge_per_image_means_are_space_evals_measures(world_judge, tasks):
    from stylecraft.world.space_eval import family_task, measure_family

    family = family_task(tasks[0].name, 7)
    task = type(tasks[0])(tasks[0].name, tasks[0].reference, family.prompts(with_style=False), family)
    images = np.concatenate([family.candidates[:6, 0], family.reference[None]])  # 7 renders of 64 px, uint8
    expected = measure_family(images, family, world_judge.oracles, world_judge.style_judge)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # as the pipeline draws them
    assert round(float(world_judge.style(images, task).mean()), 4) == expected["style_rank"] >= expected["style_match"]
    assert round(float(world_judge.content(images, task).mean()), 4) == expected["content"]
    assert round(float(world_judge.leak(images, task).mean()), 4) == expected["leakage"] > 0  # the reference leaks


def test_recommend_ranks_by_style_minus_leakage_within_a_third_of_all_blocks_leakage():
    valid = ["down_blocks.2", "down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "up_blocks.0"]
    valid += ["up_blocks.0.attentions.0", "up_blocks.0.attentions.1"]
    rows = [
        {"block": "down_blocks.2", "style_gain": 0.1, "leakage": 0.4, "content_loss": 0.3},
        {"block": "down_blocks.2.attentions.0", "style_gain": 0.0, "leakage": 0.0, "content_loss": 0.0},
        {"block": "down_blocks.2.attentions.1", "style_gain": 0.1, "leakage": 0.4, "content_loss": 0.3},
        {"block": "up_blocks.0", "style_gain": 0.6, "leakage": 0.1, "content_loss": 0.0},
        {"block": "up_blocks.0.attentions.0", "style_gain": 0.1, "leakage": 0.0, "content_loss": 0.0},
        {"block": "up_blocks.0.attentions.1", "style_gain": 0.5, "leakage": 0.05, "content_loss": 0.0},
    ]
    everything = {"style_gain": 0.7, "leakage": 0.6, "content_loss": 0.5}
    recommendation = recommend(rows, everything, valid, None)
    # up0.att1 (0.45), then up0.att0 (0.1): both attentions of up_blocks.0, written as the block; budget 0.2
    assert recommendation["style"] == ["up_blocks.0"] and recommendation["max_leakage"] == 0.2
    assert recommendation["layout"] == ["down_blocks.2.attentions.1"]
    assert recommend(rows, everything, valid, 0.01)["style"] == ["up_blocks.0.attentions.0"]  # 0.05 leaks too much
    # a block that only un-leaks ranks first but adds no style: skipped, not the end of the search
    unleaking = {"block": "down_blocks.2.attentions.0", "style_gain": 0.0, "leakage": -0.6, "content_loss": 0.0}
    assert recommend([unleaking, *rows[2:]], everything, valid, None)["style"] == ["up_blocks.0"]
    nothing = [{**row, "style_gain": 0.0} for row in rows]
    assert recommend(nothing, everything, valid, None)["rule"] == "none gains style: the best-ranked attention"
    assert whole_blocks(["up_blocks.0.attentions.1"], valid) == ["up_blocks.0.attentions.1"]
    assert [verdict(row, everything) for row in rows[1:]] == ["-", "layout", "style", "-", "style"]
    both = {"style_gain": 0.5, "leakage": 0.5, "content_loss": 0.0}
    assert verdict(both, everything) == "style+layout"


def test_compare_says_beats_only_beyond_two_standard_errors():
    def run(style: list[float], leak: list[float]) -> Run:
        style, leak = torch.tensor(style, dtype=torch.float), torch.tensor(leak, dtype=torch.float)
        return Run(torch.zeros(len(style), 3, 8, 8), style, torch.zeros(len(style)), leak, 0.0)

    preset = run([1, 0, 1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0])
    better = run([1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0])
    assert compare(better, preset)["outcome"] == "beats" and compare(preset, better)["outcome"] == "loses to"
    slightly = run([1, 0, 1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0])  # one image better of eight
    assert compare(slightly, preset)["outcome"] == "equals"


def _args(folders, out, *extra: str):
    model, ip_adapter = folders
    common = ["--model", str(model), "--ip-adapter", str(ip_adapter), "--ip-adapter-weight", "ip-adapter.safetensors"]
    return build_parser().parse_args([*common, "--images-per-block", "2", "--steps", "2", "--out", str(out), *extra])


def test_cli_prints_the_table_and_writes_probe_json_and_grids(folders, style_png, clip_dir, tmp_path, capsys):
    assert run_cli(_args(folders, tmp_path / "world", "--families", "1")) == 0
    printed = capsys.readouterr().out
    assert "up_blocks.1.attentions.1" in printed and "recommended style set:" in printed
    assert "sd15 style preset (up_blocks.1)" in printed
    report = json.loads((tmp_path / "world" / "probe.json").read_text())
    assert report["settings"]["judge"] == "WorldJudge" and report["timings"]["total_seconds"] > 0
    assert (tmp_path / "world" / "grids" / "up_blocks.1.attentions.1.png").is_file()
    assert (tmp_path / "world" / "grids" / "recommended.png").is_file()

    clip = ["--clip", str(clip_dir), "--style-image", str(style_png), "--reference-content", "a cat"]
    assert run_cli(_args(folders, tmp_path / "clip", *clip, "--prompt", "a dog", "--prompt", "a tree")) == 0
    report = json.loads((tmp_path / "clip" / "probe.json").read_text())
    assert report["settings"]["judge"] == "ClipJudge"  # chosen by --style-image
    assert report["settings"]["tasks"][0]["prompts"] == ["a dog", "a tree"]
    assert len(report["rows"]) == 17


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--judge", "clip", "--style-image", "x.png", "--prompt", "a dog"], "--judge clip needs --reference-content"),
        (["--judge", "clip", "--reference-content", "a cat"], "--judge clip needs --style-image"),
        (["--judge", "world", "--style-image", "x.png"], "--style-image is for --judge clip"),
        (["--reference-content", "a cat"], "--reference-content is for --judge clip"),
        (["--families", "10"], "--families 10 is above the cap of 9"),
        (["--images-per-block", "0"], "--images-per-block must be at least 1"),
    ],
)
def test_cli_errors_are_one_line_before_any_work(folders, tmp_path, extra, message):
    with pytest.raises(StylecraftError, match=message) as error:
        run_cli(_args(folders, tmp_path / "out", *extra))
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_cli_on_a_trained_tiny_shapes_sd_and_its_ip_adapter(shapes_sd, tmp_path):
    """The world path end to end: test_world_sd's tiny shapes-sd (3 steps a stage) and an IP-Adapter trained on it."""
    from stylecraft.world.train_sd_adapters import IP_ADAPTER_WEIGHTS, train_ip_adapter

    sd, ip = shapes_sd / "unet" / "shapes-sd", tmp_path / "ip"
    ip.mkdir()
    recipe = test_world_sd.tiny("ip-adapter", steps=3, lr=1e-2, extra={"eval": {"images": 2, "steps": 2}})
    train_ip_adapter(recipe, ip, False, sd, None, test_world_sd.NO_ORACLES)
    weight = ["--ip-adapter-weight", f"ip-adapter/{IP_ADAPTER_WEIGHTS}"]  # after _args's: the last one counts
    assert run_cli(_args((sd, ip), tmp_path / "probe", *weight, "--families", "2")) == 0
    report = json.loads((tmp_path / "probe" / "probe.json").read_text())
    blocks = [f"down_blocks.{i}" for i in range(3)] + ["mid_block"] + [f"up_blocks.{i}" for i in range(3)]
    attentions = [f"{b}.attentions.{k}" for b in blocks for k in range(1 if b.startswith(("down", "mid")) else 2)]
    assert [row["block"] for row in report["rows"]] == sorted(blocks + attentions)  # three levels, 17 keys
    assert report["evaluation"]["presets"][0]["blocks"] == ["up_blocks.1"]
    # 2 families x 2 images for each distinct configuration; 64 px images in the grids
    assert report["timings"]["images_drawn"] == 4 * report["timings"]["configurations_drawn"]
    assert [task["name"] for task in report["settings"]["tasks"]] == ["dotted fill", "dashed outline"]
