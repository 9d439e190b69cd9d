"""Validation at the edge (issue #32 part B): bad flags, files and images are refused before any work, each with one
``error:`` line that names the problem, never the generic ``error (SomeException)`` line or a silent wrong result."""

import json
import math
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.optim.optimizer import register_optimizer_step_post_hook

import stylecraft
from stylecraft.adapters import AdaptedTransformer, read_adapter
from stylecraft.cli import main
from stylecraft.errors import StylecraftError
from stylecraft.feedback import read_prompts
from stylecraft.muse import load_muse
from stylecraft.sampling import SamplingConfig
from stylecraft.training import load_recipe

PROMPT = "a red house in watercolor painting style"


def _error(capsys, argv) -> str:
    """Run the CLI; it must fail with exactly one ``error:`` line (not the catch-all's ``error (Type):``)."""
    code = main(["--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def trained(tiny_muse_dir, style_png, tmp_path_factory):
    """A 2-step adapter (with its checkpoint) of the tiny model, trained once for the module."""
    out = tmp_path_factory.mktemp("trained") / "adapter"
    argv = ["--quiet", "train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", PROMPT]
    assert main([*argv, "--steps", "2", "--batch-size", "1", "--checkpoint-every", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guidance", "nan"], "--guidance must be a finite number, got nan"),
        (["--lambda-a", "nan"], "--lambda-a must be a finite number"),
        (["--lambda-b", "nan"], "--lambda-b must be a finite number"),
        (["--temperature", "nan"], "--temperature must be a finite number"),
        (["--temperature", "-5"], "--temperature must be 0 or above, got -5.0"),
        (["--temperature", "2", "inf"], "--temperature must be a finite number, got inf"),
        (["--num-images", "100000"], "--num-images 100000 is above the cap of 256"),
        (["--seed", str(2**64)], "--seed 18446744073709551616 is above the cap of 18446744073709551615"),
        (["--seed", "-1"], "--seed must be at least 0, got -1"),
        (["--device", "gpu7"], "--device 'gpu7' is not a torch device"),
    ],
)
def test_sample_flags_refused_before_any_work(tiny_muse_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "s"
    argv = ["sample", "--model", str(tiny_muse_dir), "--prompt", PROMPT, "--steps", "1", "--num-images", "1"]
    assert message in _error(capsys, [*argv, *extra, "--out", str(out)])
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint-every", "-1"], "--checkpoint-every must be at least 1, got -1"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be at least 1, got 0"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "1e39"], "--lr must be in [0, 1e+30], got 1e+39"),
        (["--batch-size", "100000"], "--batch-size 100000 is above the cap of 256"),
        (["--rank", str(10**9)], "--rank 1000000000 is above the cap of 1024"),
        (["--shift", "1000"], "--shift 1000 is above the cap of 4"),
        (["--sample-every", "-1"], "--sample-every must be at least 0"),
        (["--seed", str(2**64)], "is above the cap of 18446744073709551615"),
        (["--seed", "-3"], "--seed must be at least 0, got -3"),
    ],
)
def test_train_flags_refused_before_any_work(tiny_muse_dir, style_png, tmp_path, capsys, extra, message):
    out = tmp_path / "ad"
    argv = ["train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", PROMPT, "--steps", "1"]
    assert message in _error(capsys, [*argv, *extra, "--out", str(out)])
    assert not out.exists()


def test_other_commands_check_their_flags(tmp_path, capsys):
    round_args = ["--adapter", str(tmp_path), "--style", "x", "--out", str(tmp_path / "r")]
    assert "--per-prompt 100000 is above the cap of 256" in _error(
        capsys, ["feedback", *round_args, "--per-prompt", "100000"]
    )
    assert "--guidance must be a finite number" in _error(capsys, ["feedback", *round_args, "--guidance", "nan"])
    assert "--num-images 100000 is above the cap" in _error(
        capsys, ["eval", "--num-images", "100000", "--out", str(tmp_path / "e")]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_clear_line(tiny_muse_dir, style_png, tmp_path, capsys):
    argv = ["train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", PROMPT]
    line = _error(capsys, [*argv, "--device", "cuda", "--out", str(tmp_path / "ad")])
    assert "CUDA is not available on this machine; use --device cpu" in line
    with pytest.raises(StylecraftError, match="CUDA is not available"):
        stylecraft.load(tiny_muse_dir, device="cuda:0")


def test_weights_are_checked_finite_before_they_are_written(tiny_muse_dir, style_png, tmp_path, capsys):
    # the loss is checked before each update; an update that leaves inf/NaN weights (here: forced by a hook after
    # Adam's step, as an overflowing update would) must be caught before any checkpoint or adapter holds them
    def poison(optimizer, args, kwargs):
        optimizer.param_groups[0]["params"][0].data.fill_(math.inf)

    out = tmp_path / "ad"
    argv = ["train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", PROMPT, "--steps", "1"]
    handle = register_optimizer_step_post_hook(poison)
    try:
        line = _error(capsys, [*argv, "--batch-size", "1", "--lr", "0.01", "--out", str(out)])
    finally:
        handle.remove()
    assert "the adapter weights became inf or NaN at step 1: --lr 0.01 is likely too high" in line
    assert not (out / "adapter_model.safetensors").exists() and not (out / "checkpoint").exists()


def test_save_adapter_refuses_non_finite_weights(tiny_muse_dir, tmp_path):
    model = AdaptedTransformer(load_muse(tiny_muse_dir))
    model.add_adapter("a", model.new_config("styledrop", rank=2))
    with torch.no_grad():
        model.styledrop["a"].up.fill_(math.nan)
    with pytest.raises(StylecraftError, match="non-finite values in up; lower the learning rate"):
        model.save_adapter("a", tmp_path / "a")
    assert not (tmp_path / "a" / "adapter_model.safetensors").exists()


def test_resume_with_other_inputs_names_what_differs(trained, tiny_muse_dir, style_png, tmp_path, capsys):
    other = tmp_path / "other.png"
    Image.fromarray((np.random.RandomState(9).rand(32, 32, 3) * 255).astype("uint8")).save(other)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    base = ["train", "--model", str(tiny_muse_dir), "--steps", "3", "--batch-size", "1", "--checkpoint-every", "1"]
    resume = ["--resume", "--out", str(run)]
    line = _error(capsys, [*base, "--image", str(other), "--prompt", PROMPT, *resume])
    assert "--resume differs from the checkpoint: --image number 1 is another picture" in line
    line = _error(capsys, [*base, "--image", str(style_png), "--prompt", "a blue cat", *resume])
    assert f"prompt {PROMPT!r} became 'a blue cat'" in line
    line = _error(capsys, [*base, "--image", str(style_png), "--image", str(style_png), "--prompt", PROMPT, *resume])
    assert "2 training images, the checkpoint has 1" in line
    assert main(["--quiet", *base, "--image", str(style_png), "--prompt", PROMPT, *resume]) == 0  # the same: resumes
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "is corrupt (not readable JSON"),
        ("[]", "is not a trainer state"),
        ('{"step": 1}', "is not a trainer state"),
        ("STEP_STR", "step must be a whole number, got '1'"),
        ("CONFIG_LIST", "config must be a JSON object, got []"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_corrupt_trainer_state_names_the_file_and_the_fix(
    trained, tiny_muse_dir, style_png, tmp_path, capsys, text, message
):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    state = run / "checkpoint" / "trainer_state.json"
    saved = json.loads(state.read_text())
    text = {"STEP_STR": json.dumps({**saved, "step": "1"}), "CONFIG_LIST": json.dumps({**saved, "config": []})}.get(
        text, text
    )
    state.write_text(text)
    argv = ["train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", PROMPT, "--steps", "3"]
    line = _error(capsys, [*argv, "--batch-size", "1", "--checkpoint-every", "1", "--resume", "--out", str(run)])
    assert str(state) in line and message in line and "train again without --resume" in line


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shared": "no"}, "shared must be true or false, got 'no'"),
        ({"num_layers": "8"}, "num_layers must be a whole number, got '8'"),
        ({"target_modules": 7}, "target_modules must be a list, got 7"),
        ({"rank": 10**9}, "rank 1000000000 is above the cap of 1024"),
        ({"rank": True}, "rank must be a whole number, got True"),
        ({"prompts": [1]}, "prompts[0] must be a string, got 1"),
        ({"training": []}, "training must be a JSON object"),
        (None, "not a JSON object"),
    ],
)
def test_adapter_config_fields_are_checked_by_type_and_range(trained, tmp_path, change, message):
    folder = tmp_path / "ad"
    shutil.copytree(trained, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps([] if change is None else {**config, **change}))
    with pytest.raises(StylecraftError, match="adapter_config.json is corrupt") as err:
        read_adapter(folder)
    assert message in str(err.value)


def test_adapter_of_another_architecture_fails_at_load_even_without_its_fingerprint(trained, tiny_muse_dir, tmp_path):
    # an adapter whose config and weights agree with each other on one more layer than the model has
    folder = tmp_path / "ad"
    shutil.copytree(trained, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(base_fingerprint="", base_weights="", num_layers=config["num_layers"] + 1)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    weights = load_file(folder / "adapter_model.safetensors")
    grown = {k: torch.cat([v, v[:1]]) if k.endswith("_offset") else v for k, v in weights.items()}  # [L+1, ...]
    save_file(grown, folder / "adapter_model.safetensors")
    model = AdaptedTransformer(load_muse(tiny_muse_dir))
    with pytest.raises(StylecraftError, match=r"is for a transformer of 3 layers of width 32, but this model's has 2"):
        model.load_adapter(folder)


def test_recipe_fields_are_checked_by_type(tmp_path):
    for recipe, message in (
        ([], "must hold a JSON object of settings"),
        ({"lr": "x"}, "--lr must be a finite number, got 'x'"),
        ({"shared": "no"}, "--shared must be true or false"),
        ({"target_modules": 7}, "--target-modules must be a list"),
        ({"lr": 1e999}, "--lr must be a finite number, got inf"),
    ):
        path = tmp_path / "recipe.json"
        path.write_text(json.dumps(recipe))
        with pytest.raises(StylecraftError) as err:
            load_recipe(path)
        assert message in str(err.value)


def test_score_refuses_a_pickle_only_clip_folder(clip_dir, tmp_path, style_png, capsys):
    from transformers import CLIPModel

    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    torch.save(CLIPModel.from_pretrained(folder).state_dict(), folder / "pytorch_model.bin")  # loadable by transformers
    for path in folder.glob("*.safetensors"):
        path.unlink()
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(style_png, images / "a.png")
    line = _error(capsys, ["score", "--images", str(images), "--prompt", PROMPT, "--clip", str(folder)])
    assert "weights only as a pickle (pytorch_model.bin), which stylecraft never loads" in line


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``x``height`` but holds no pixel data: only its header can be read."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def _ztxt_png(style_png) -> bytes:
    """A valid 32x32 PNG with an 8 MiB zTXt chunk (8 KiB compressed) before its pixels."""
    data = style_png.read_bytes()
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (8 << 20), 9))
    return data[:33] + ztxt + data[33:]  # after the signature (8 bytes) and IHDR (25)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda png: _png_header(10000, 10000), "is 10000x10000; resize it to at most 8192 pixels on a side"),
        (lambda png: _png_header(20000, 20000), "is too large to open safely"),
        (_ztxt_png, "is not a readable image (ValueError: Decompressed data too large"),
    ],
)
def test_hostile_images_are_refused_from_their_header(style_png, tmp_path, capsys, make, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(make(style_png))
    line = _error(capsys, ["score", "--images", str(tmp_path), "--prompt", PROMPT, "--style-image", str(bad)])
    assert line.startswith(f"error: {bad} ") and message in line


def test_prompts_file_must_be_utf8(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(b"a cat\n\xff\xfe a dog\n")
    with pytest.raises(StylecraftError, match=r"prompts.txt is not UTF-8 text \(byte 6\); save it as UTF-8"):
        read_prompts(path)


def test_api_sample_checks_its_settings_before_sampling(tiny_muse_dir, tmp_path):
    muse = stylecraft.load(tiny_muse_dir)
    for kwargs, message in (
        ({"config": SamplingConfig(steps=1, guidance_scale=math.nan)}, "guidance_scale must be a finite number"),
        ({"config": SamplingConfig(steps=1, temperature=[-1.0])}, r"temperature\[0\] must be 0 or above"),
        ({"num_images": 100_000}, "num_images 100000 is above the cap of 256"),
        ({"seed": -1}, "seed must be at least 0"),
    ):
        with pytest.raises(StylecraftError, match=message):
            stylecraft.sample(muse, [PROMPT], out=tmp_path / "s", **kwargs)
    assert not (tmp_path / "s").exists()
