"""The command line, run in-process: outputs, metadata, and one-line errors for bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from stylecraft.cli import main

PROMPT = "a red house in watercolor painting style"


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("error"), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_train_then_sample(tiny_muse_dir, style_png, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    assert (
        main(
            [
                "--quiet",
                "train",
                "--model",
                str(tiny_muse_dir),
                "--image",
                str(style_png),
                "--prompt",
                PROMPT,
                "--steps",
                "3",
                "--batch-size",
                "2",
                "--lr",
                "0.01",
                "--shift",
                "1",
                "--out",
                str(adapter),
            ]
        )
        == 0
    )
    assert json.loads((adapter / "adapter_config.json").read_text())["training"]["shift"] == 1
    out = tmp_path / "samples"
    assert (
        main(
            [
                "--quiet",
                "sample",
                "--model",
                str(tiny_muse_dir),
                "--prompt",
                "a cat in watercolor painting style",
                "--prompt",
                "a dog in watercolor painting style",
                "--adapter",
                str(adapter),
                "--num-images",
                "2",
                "--steps",
                "3",
                "--lambda-a",
                "1.0",
                "--seed",
                "5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    names = [".stylecraft", "000.png", "001.png", "002.png", "003.png", "grid.png", "run.json"]  # the marker: ours
    assert sorted(p.name for p in out.iterdir()) == names
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 5 and run["sampling"]["lambda_a"] == 1.0 and run["adapter"] == str(adapter)
    assert run["sampling"]["guidance_scale"] == 10.0  # no --guidance, an aMUSEd-layout folder: aMUSEd's default
    with Image.open(out / "001.png") as png:
        assert png.text["prompt"] == "a dog in watercolor painting style" and png.text["seed"] == "5"
        assert json.loads(png.text["sampling"])["steps"] == 3


def test_two_adapter_sampling_cli(tiny_muse_dir, style_png, tmp_path):
    for name, prompt in (("style", PROMPT), ("content", "a red house")):
        assert (
            main(
                [
                    "--quiet",
                    "train",
                    "--model",
                    str(tiny_muse_dir),
                    "--image",
                    str(style_png),
                    "--prompt",
                    prompt,
                    "--steps",
                    "2",
                    "--batch-size",
                    "1",
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    out = tmp_path / "mix"
    assert (
        main(
            [
                "--quiet",
                "sample",
                "--model",
                str(tiny_muse_dir),
                "--prompt",
                PROMPT,
                "--style-adapter",
                str(tmp_path / "style"),
                "--content-adapter",
                str(tmp_path / "content"),
                "--compose",
                "mix",
                "--gamma",
                "0.6",
                "--steps",
                "2",
                "--num-images",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["content_prompts"] == ["a red house"] and run["sampling"]["gamma"] == 0.6


@pytest.mark.parametrize(
    "mode, warning",
    [("RGBA", "mode RGBA"), ("L", "mode L"), ("P", "mode P"), ("I;16", "mode I;16"), ("RGB-wide", "centre-cropped")],
)
def test_image_modes_are_converted_with_a_warning(tiny_muse_dir, tmp_path, mode, warning, caplog):
    rng = np.random.RandomState(1)
    if mode == "I;16":
        image = Image.fromarray((rng.rand(16, 16) * 65535).astype(np.uint16))
    elif mode == "RGB-wide":
        image = Image.fromarray((rng.rand(16, 32, 3) * 255).astype("uint8"))
    else:
        image = Image.fromarray((rng.rand(16, 16, 3) * 255).astype("uint8")).convert(mode)
    path = tmp_path / "in.png"
    image.save(path)
    assert (
        main(
            [
                "train",
                "--model",
                str(tiny_muse_dir),
                "--image",
                str(path),
                "--prompt",
                PROMPT,
                "--steps",
                "1",
                "--batch-size",
                "1",
                "--out",
                str(tmp_path / "ad"),
            ]
        )
        == 0
    )
    assert warning in caplog.text


def test_bad_inputs_give_one_line_errors(tiny_muse_dir, style_png, tmp_path, capsys):
    train = ["train", "--model", str(tiny_muse_dir), "--steps", "1", "--batch-size", "1"]
    assert "image not found" in _error(capsys, train + ["--image", "nope.png", "--prompt", PROMPT, "--out", "x"])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert "not a readable image" in _error(capsys, train + ["--image", str(text), "--prompt", PROMPT, "--out", "x"])
    truncated = tmp_path / "truncated.png"
    Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    assert "not a readable image" in _error(
        capsys, train + ["--image", str(truncated), "--prompt", PROMPT, "--out", "x"]
    )
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (4, 4)).save(tiny)
    assert "at least 16 pixels" in _error(capsys, train + ["--image", str(tiny), "--prompt", PROMPT, "--out", "x"])
    assert "empty prompt" in _error(capsys, train + ["--image", str(style_png), "--prompt", " ", "--out", "y"])
    shift = ["--image", str(style_png), "--prompt", PROMPT, "--shift", "-1", "--out", "y"]
    assert "--shift must be 0 (off) or a number of tokens, got -1" in _error(capsys, train + shift)
    assert not (tmp_path / "x").exists()

    sample = ["sample", "--prompt", PROMPT, "--steps", "1", "--out", str(tmp_path / "s")]
    assert "not a folder" in _error(capsys, sample + ["--model", "./no-such-model"])
    assert "adapter folder not found" in _error(
        capsys, sample + ["--model", str(tiny_muse_dir), "--adapter", str(tmp_path / "none")]
    )
    assert "go together" in _error(capsys, sample + ["--model", str(tiny_muse_dir), "--style-adapter", "a"])
    assert not (tmp_path / "s").exists()


def test_existing_output_is_kept(tiny_muse_dir, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    message = _error(
        capsys, ["sample", "--model", str(tiny_muse_dir), "--prompt", PROMPT, "--steps", "1", "--out", str(out)]
    )
    assert "--overwrite" in message and (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no half-written staging folder left behind


def test_long_prompt_is_truncated_with_a_warning(tiny_muse_dir, tmp_path, caplog):
    assert (
        main(
            [
                "sample",
                "--model",
                str(tiny_muse_dir),
                "--prompt",
                "red " * 120,
                "--steps",
                "1",
                "--num-images",
                "1",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert "truncated" in caplog.text


def test_help_and_env(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "sample" in capsys.readouterr().out
    assert main(["env"]) == 0
    assert "diffusers" in capsys.readouterr().out
