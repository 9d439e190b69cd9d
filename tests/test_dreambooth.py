"""DreamBooth content adapters: prior images from the frozen base, the prior term of Eq. 2, the CLI, bad input."""

import json

import pytest
import torch

from stylecraft.adapters import read_adapter
from stylecraft.cli import main
from stylecraft.dreambooth import class_prior_tokens, train_dreambooth
from stylecraft.errors import StylecraftError
from stylecraft.sampling import SamplingConfig, sample_tokens
from stylecraft.training import TrainConfig, train_adapter

INSTANCE = "a red sks house in watercolor painting style"
CLASS = "a red house in watercolor painting style"


def _config(**kwargs):
    values = dict(steps=4, lr=3e-2, batch_size=2, checkpoint_every=0, seed=3, class_prompt=CLASS, num_class_images=3)
    return TrainConfig(**{**values, **kwargs})


def test_prior_images_are_drawn_by_the_frozen_base(muse):
    before = {k: v.clone() for k, v in muse.transformer.state_dict().items()}
    prior = class_prior_tokens(muse, CLASS, 3, seed=1)
    side = muse.resolution // muse.vae_scale_factor
    assert prior.shape == (3, side, side) and prior.max() < muse.mask_token_id  # finished drawings: no mask left
    config = SamplingConfig(guidance_scale=muse.sampling_defaults["guidance_scale"])
    generator = torch.Generator("cpu").manual_seed(1)
    drawn = sample_tokens(muse, [CLASS], config, num_images_per_prompt=3, generator=generator, progress=False)
    assert torch.equal(prior, drawn)  # the base alone, at its own CFG: what `stylecraft sample` draws
    assert not torch.equal(prior, class_prior_tokens(muse, CLASS, 3, seed=2))
    assert all(torch.equal(v, before[k]) for k, v in muse.transformer.state_dict().items())


def test_lambda_prior_zero_is_plain_training(muse, image, tmp_path):
    train_dreambooth(muse, [image], [INSTANCE], _config(lambda_prior=0.0), tmp_path / "db", progress=False)
    train_adapter(muse, [image], [INSTANCE], TrainConfig(**{**vars(_config()), "class_prompt": None}), tmp_path / "p")
    _, dreambooth = read_adapter(tmp_path / "db")
    _, plain = read_adapter(tmp_path / "p")
    assert all(torch.equal(dreambooth[k], plain[k]) for k in plain)
    assert not (tmp_path / "db" / "prior_images.png").exists()  # no prior images drawn for a term of weight 0
    assert "prior_loss" not in json.loads((tmp_path / "db" / "train_log.json").read_text())[0]


def test_prior_term_enters_the_loss_with_weight_lambda(muse, image, tmp_path):
    """DreamBooth Eq. 2: loss = instance loss + λ_prior × prior loss. One step from the same start draws the same
    instance and prior batches whatever λ is, so the logged losses must differ by exactly the λ difference."""
    prior = class_prior_tokens(muse, CLASS, 3, seed=0)
    first = {}
    for lam in (0.0, 1.0, 3.0):
        folder = tmp_path / f"lambda-{lam:g}"
        config = _config(steps=1, lambda_prior=lam)
        train_dreambooth(muse, [image], [INSTANCE], config, folder, progress=False, prior_tokens=prior)
        first[lam] = json.loads((folder / "train_log.json").read_text())[0]
    instance, prior_loss = first[0.0]["loss"], first[1.0]["prior_loss"]
    assert prior_loss > 0 and first[3.0]["prior_loss"] == pytest.approx(prior_loss, abs=1e-4)
    assert first[1.0]["loss"] == pytest.approx(instance + prior_loss, abs=2e-4)
    assert first[3.0]["loss"] == pytest.approx(instance + 3 * prior_loss, abs=3e-4)
    _, with_prior = read_adapter(tmp_path / "lambda-1")
    _, without = read_adapter(tmp_path / "lambda-0")
    assert any(not torch.equal(with_prior[k], without[k]) for k in without)  # the prior images move the weights
    assert (tmp_path / "lambda-1" / "prior_images.png").is_file()


def test_train_content_from_the_cli_records_the_class_prompt(tiny_muse_dir, style_png, tmp_path):
    out = tmp_path / "content"
    argv = ["--quiet", "train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", INSTANCE]
    argv += ["--content", "--class-prompt", CLASS, "--lambda-prior", "0.5", "--num-class-images", "2"]
    assert main([*argv, "--steps", "2", "--batch-size", "2", "--out", str(out)]) == 0
    config, _ = read_adapter(out)
    assert config.training["class_prompt"] == CLASS and config.training["lambda_prior"] == 0.5
    assert config.training["num_class_images"] == 2 and config.prompts == [INSTANCE]
    assert (out / "prior_images.png").is_file()


def test_bad_content_input_is_one_clear_error(tiny_muse_dir, style_png, tmp_path, capsys, muse, image):
    argv = ["train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", INSTANCE, "--content"]
    argv += ["--steps", "1", "--out", str(tmp_path / "x")]
    for extra, message in (
        ([], "the prior term needs --class-prompt"),  # the tiny model's recipe is dreambooth.json: λ_prior 1
        (["--class-prompt", CLASS, "--lambda-prior", "-1"], "--lambda-prior must be 0"),
        (["--class-prompt", INSTANCE], "is a training prompt"),
        (["--class-prompt", CLASS, "--lambda-prior", "0"], "--class-prompt is for the prior term, which is off"),
    ):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not (tmp_path / "x").exists()
    with pytest.raises(StylecraftError, match="class prompt they were drawn for"):  # prior images without their prompt
        prior = class_prior_tokens(muse, CLASS, 2)
        train_adapter(muse, [image], [INSTANCE], TrainConfig(steps=1, batch_size=2), tmp_path / "y", prior_tokens=prior)


def test_eval_content_refuses_bad_settings_before_any_work(tmp_path, capsys):
    out = str(tmp_path / "eval")
    for extra, message in (
        (["--num-images", "8"], "--num-images must be at least 16"),
        (["--recipe", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["--lambda-prior", "-0.5"], "--lambda-prior must be 0"),
    ):
        assert main(["eval-content", *extra, "--out", out]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "eval").exists()


def test_eval_two_adapters_takes_a_content_recipe(tmp_path, capsys):
    out = tmp_path / "two"
    argv = ["eval-two-adapters", "--content-recipe", "no-such-recipe", "--num-images", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown recipe 'no-such-recipe'" in err[0], err
    assert not out.exists()
