"""The training loop: it learns, only adapter weights change, resume is exact, and bad runs fail cleanly."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stylecraft.adapters import read_adapter
from stylecraft.errors import StylecraftError
from stylecraft.io import to_tensor_image
from stylecraft.muse import load_muse
from stylecraft.training import TrainConfig, load_recipe, train_adapter

PROMPT = "a red house in watercolor painting style"


def _config(**kwargs):
    values = dict(steps=8, lr=3e-2, batch_size=4, checkpoint_every=0, seed=3)
    values.update(kwargs)
    return TrainConfig(**values)


@pytest.mark.parametrize("adapter_type", ["styledrop", "lora"])
def test_training_lowers_the_loss_and_touches_only_the_adapter(muse, image, tmp_path, adapter_type):
    before = {k: v.clone() for k, v in muse.transformer.state_dict().items()}
    config = _config(adapter_type=adapter_type, shared=False, rank=4, steps=30, lr=1e-2)
    train_adapter(muse, [image], [PROMPT], config, tmp_path / "ad", progress=False)
    log = json.loads((tmp_path / "ad" / "train_log.json").read_text())
    assert len(log) == 30
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]])
    after = {k.replace(".base_layer", ""): v for k, v in muse.transformer.state_dict().items() if "lora_" not in k}
    assert after.keys() == before.keys()
    for key, value in before.items():  # the base transformer is frozen (LoRA adds keys, never changes these)
        assert torch.equal(after[key], value), key
    config_file, state = read_adapter(tmp_path / "ad")
    assert config_file.adapter_type == adapter_type and config_file.prompts == [PROMPT]
    assert config_file.training["trainable_parameters"] == sum(v.numel() for v in state.values())
    assert any(v.abs().sum() > 0 for k, v in state.items() if "up" in k or "lora_B" in k)


def test_resume_reaches_the_same_weights(muse, image, tmp_path):
    images, prompts = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], [PROMPT, "a cat in watercolor style"]
    train_adapter(muse, images, prompts, _config(steps=6), tmp_path / "full", progress=False)
    train_adapter(muse, images, prompts, _config(steps=3), tmp_path / "part", progress=False)
    train_adapter(muse, images, prompts, _config(steps=6), tmp_path / "part", resume=True, progress=False)
    _, full = read_adapter(tmp_path / "full")
    _, resumed = read_adapter(tmp_path / "part")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert len(json.loads((tmp_path / "part" / "train_log.json").read_text())) == 6


def test_resume_refuses_changed_settings(muse, image, tmp_path):
    train_adapter(muse, [image], [PROMPT], _config(steps=2), tmp_path / "ad", progress=False)
    with pytest.raises(StylecraftError, match=r"--resume with changed settings \(lr"):
        train_adapter(muse, [image], [PROMPT], _config(steps=4, lr=0.1), tmp_path / "ad", resume=True)
    state = tmp_path / "ad" / "checkpoint" / "trainer_state.json"  # a checkpoint from before --shift existed
    meta = json.loads(state.read_text())
    del meta["config"]["shift"]
    state.write_text(json.dumps(meta))
    train_adapter(muse, [image], [PROMPT], _config(steps=3), tmp_path / "ad", resume=True, progress=False)
    # progress samples do not touch the weights: a resume may add them, with their own settings
    watched = _config(steps=4, sample_every=4, sample_steps=2, sample_guidance=3.0)
    train_adapter(muse, [image], [PROMPT], watched, tmp_path / "ad", resume=True, progress=False)
    assert (tmp_path / "ad" / "samples" / "step_000004.png").is_file()
    with pytest.raises(StylecraftError, match=r"changed settings \(shift: 0 -> 1\)"):
        train_adapter(muse, [image], [PROMPT], _config(steps=5, shift=1), tmp_path / "ad", resume=True)
    with pytest.raises(StylecraftError, match="nothing to resume"):
        train_adapter(muse, [image], [PROMPT], _config(), tmp_path / "fresh", resume=True)
    with pytest.raises(StylecraftError, match="already exists"):
        train_adapter(muse, [image], [PROMPT], _config(), tmp_path / "ad")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(muse, image, tmp_path):
    train_adapter(muse, [image], [PROMPT], _config(steps=2), tmp_path / "ad", progress=False)
    good = (tmp_path / "ad" / "checkpoint" / "state.safetensors").read_bytes()
    # a learning rate so large the weights overflow to inf, then the loss turns NaN
    with pytest.raises(StylecraftError, match="loss became nan"):
        train_adapter(
            muse,
            [image],
            [PROMPT],
            _config(steps=50, lr=1e20, shared=False),
            tmp_path / "bad",
            progress=False,
        )
    assert not (tmp_path / "bad" / "adapter_config.json").exists()  # nothing that looks finished
    assert (tmp_path / "ad" / "checkpoint" / "state.safetensors").read_bytes() == good


def test_bad_inputs(muse, image, tmp_path):
    with pytest.raises(StylecraftError, match="empty prompt"):
        train_adapter(muse, [image], [" "], _config(), tmp_path / "a")
    with pytest.raises(StylecraftError, match="2 images but 3 prompts"):
        train_adapter(muse, [image, image], ["a", "b", "c"], _config(), tmp_path / "a")
    with pytest.raises(StylecraftError, match="must be 8x8"):
        train_adapter(muse, [image.resize((16, 16))], [PROMPT], _config(), tmp_path / "a")
    with pytest.raises(StylecraftError, match="--batch-size must be at least 1"):
        TrainConfig(batch_size=0)


def test_recipes():
    round1, round2, lora = load_recipe("round1"), load_recipe("round2"), load_recipe("lora")
    assert (round1.rank, round1.shared, round1.lr, round1.batch_size, round1.steps) == (4, True, 3e-5, 8, 1000)
    assert (round2.rank, round2.shared) == (32, False)
    assert (lora.adapter_type, lora.rank, lora.target_modules) == ("lora", 16, ["to_q", "to_k", "to_v"])
    assert load_recipe("round1", steps=5).steps == 5
    assert round1.shift == 0 and load_recipe("shapes-round1").shift == 1  # the paper's data; the world's recipe
    with pytest.raises(StylecraftError, match="unknown recipe"):
        load_recipe("round9")


def test_full_fine_tuning_baseline(tiny_muse_dir, image, tmp_path):
    import stylecraft

    muse = load_muse(tiny_muse_dir)
    before = {k: v.clone() for k, v in muse.transformer.state_dict().items()}
    train_adapter(
        muse, [image], [PROMPT], _config(adapter_type="full", shared=False, steps=3), tmp_path / "ft", progress=False
    )
    config, state = read_adapter(tmp_path / "ft")
    assert config.adapter_type == "full" and state.keys() == before.keys()
    assert any(not torch.equal(state[k], before[k]) for k in before)
    # sampling a full fine-tune loads its weights into a fresh base and uses plain CFG
    fresh = load_muse(tiny_muse_dir)
    images = stylecraft.sample(fresh, ["a cat"], adapter=tmp_path / "ft", config=stylecraft.SamplingConfig(steps=2))
    assert len(images) == 1
    assert all(torch.equal(fresh.transformer.state_dict()[k], state[k]) for k in state)


@pytest.mark.slow
def test_accelerate_launch_two_processes(style_png, tmp_path):
    """`accelerate launch` runs the unchanged training command data-parallel (2 CPU processes, gloo)."""
    import subprocess
    import sys
    from pathlib import Path

    image = style_png
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate),
        "launch",
        "--num_processes",
        "2",
        "--cpu",
        "-m",
        "stylecraft",
        "--quiet",
        "train",
        "--model",
        "tiny-random",
        "--image",
        str(image),
        "--prompt",
        PROMPT,
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "ad"),
    ]
    subprocess.run(command, check=True, timeout=600, capture_output=True)
    config, _ = read_adapter(tmp_path / "ad")
    assert config.training["steps"] == 4


def test_known_tokens_are_checked_against_the_model(muse, image, tmp_path):
    side = muse.resolution // muse.vae_scale_factor
    tokens = muse.encode_images(torch.stack([to_tensor_image(image)]))
    train_adapter(muse, [image], [PROMPT], _config(steps=2), tmp_path / "ok", progress=False, tokens=tokens)
    with pytest.raises(StylecraftError, match=rf"this model's are \(1, {side}, {side}\)"):
        train_adapter(muse, [image], [PROMPT], _config(), tmp_path / "a", tokens=tokens[:, :2])
    with pytest.raises(StylecraftError, match="integer codes of this model's codebook"):
        train_adapter(muse, [image], [PROMPT], _config(), tmp_path / "b", tokens=tokens * 0 + muse.mask_token_id)


def test_shift_augmentation_encodes_every_moved_copy(muse, image, tmp_path):
    from stylecraft.muse import shift_grid, shift_offsets
    from stylecraft.training import shifted_tokens

    pixels = to_tensor_image(image)[None]
    variants = shifted_tokens(muse, pixels, None, 1)
    side, factor = 8 // muse.vae_scale_factor, muse.vae_scale_factor
    assert variants.shape == (1, 9, side, side)
    assert torch.equal(variants[:, 0], muse.encode_images(pixels))
    for k, (dx, dy) in enumerate(shift_offsets(1)):  # the moved image, encoded again (not the grid rolled)
        assert torch.equal(variants[:, k], muse.encode_images(shift_grid(pixels, dx * factor, dy * factor)))
    known = torch.arange(side * side).reshape(1, side, side)  # tokens a model drew: moved as grids
    moved = shifted_tokens(muse, pixels, known, 1)
    assert all(torch.equal(moved[:, k], shift_grid(known, *o)) for k, o in enumerate(shift_offsets(1)))
    assert shifted_tokens(muse, pixels, None, 0).shape == (1, 1, side, side)

    train_adapter(muse, [image], [PROMPT], _config(steps=4), tmp_path / "plain", progress=False)
    train_adapter(muse, [image], [PROMPT], _config(steps=4, shift=1), tmp_path / "shifted", progress=False)
    train_adapter(muse, [image], [PROMPT], _config(steps=2, shift=1), tmp_path / "part", progress=False)
    train_adapter(muse, [image], [PROMPT], _config(steps=4, shift=1), tmp_path / "part", resume=True, progress=False)
    (plain_config, plain), (shifted_config, shifted), (_, resumed) = (
        read_adapter(tmp_path / name) for name in ("plain", "shifted", "part")
    )
    assert shifted_config.training["shift"] == 1 and plain_config.training["shift"] == 0
    assert any(not torch.equal(plain[k], shifted[k]) for k in plain)  # the moved copies were trained on
    assert all(torch.equal(shifted[k], resumed[k]) for k in shifted)  # and resume stays exact
    with pytest.raises(StylecraftError, match="--shift must be 0"):
        TrainConfig(shift=-1)
