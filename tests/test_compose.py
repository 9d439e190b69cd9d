"""Composing a content adapter with a style adapter (issue #30): the stacked adapter and γ schedules of Eq. 5-6."""

import pytest
import torch

from stylecraft.adapters import AdaptedTransformer
from stylecraft.compose import stack_adapters
from stylecraft.errors import StylecraftError
from stylecraft.sampling import SamplingConfig, sample_tokens

EXTRA = "project_from_hidden"  # a Linear after the transformer layers


def _adapters(muse, shared=True):
    """Two StyleDrop adapters with random weights, the first with an extra site, the second without."""
    model = AdaptedTransformer(muse)
    model.add_adapter("style", model.new_config("styledrop", rank=3, shared=shared, extra_sites=[EXTRA]))
    model.add_adapter("content", model.new_config("styledrop", rank=2, shared=shared))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("style", "content"):
            for p in model.adapter_parameters(name):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize("shared", [True, False])
def test_stacked_adapter_adds_each_adapter_times_its_strength(muse, shared):
    model = _adapters(muse, shared)
    name = stack_adapters(model, {"style": 0.7, "content": 1.5})
    style, content, stacked = (model.styledrop[n] for n in ("style", "content", name))
    assert model.configs[name].rank == 5
    x = torch.randn(2, 6, model.configs[name].hidden_size)
    for layer, site in ((0, 0), (1, 1)):
        want = 0.7 * style.delta(x, layer, site) + 1.5 * content.delta(x, layer, site)
        torch.testing.assert_close(stacked.delta(x, layer, site), want, atol=1e-5, rtol=1e-5)
    # the content adapter has no extra site: there the stack is the style adapter's alone
    y = torch.randn(2, 6, stacked.extra_down[0].shape[0])
    torch.testing.assert_close(stacked.extra_delta(y, EXTRA), 0.7 * style.extra_delta(y, EXTRA))
    assert not any(p.requires_grad for p in model.adapter_parameters(name))


def test_stack_with_one_strength_zero_samples_as_the_other_adapter_alone(muse):
    model = _adapters(muse)
    stack_adapters(model, {"style": 1.0, "content": 0.0})
    config = SamplingConfig(steps=2, guidance_scale=2.0, lambda_a=0.5)

    def draw(adapter):
        generator = torch.Generator().manual_seed(3)
        return sample_tokens(muse, ["a cat"], config, model=model, adapter=adapter, generator=generator, progress=False)

    assert torch.equal(draw("stacked"), draw("style"))


def test_only_styledrop_adapters_of_one_form_stack(muse):
    model = AdaptedTransformer(muse)
    model.add_adapter("style", model.new_config("styledrop", rank=2, shared=True))
    model.add_adapter("content", model.new_config("styledrop", rank=2, shared=False))
    with pytest.raises(StylecraftError, match="--compose mix"):
        stack_adapters(model, {"style": 1.0, "content": 1.0})
    with pytest.raises(StylecraftError, match="two adapters"):
        stack_adapters(model, {"style": 1.0})


def test_gamma_schedule(muse):
    model = _adapters(muse)

    def draw(steps=4, **gamma):
        config = SamplingConfig(steps=steps, guidance_scale=2.0, **gamma)
        generator = torch.Generator().manual_seed(5)
        kwargs = {"style_adapter": "style", "content_adapter": "content", "content_prompts": ["a cat"]}
        return sample_tokens(
            muse, ["a cat in ink style"], config, model=model, generator=generator, progress=False, **kwargs
        )

    assert torch.equal(draw(gamma=0.3, gamma_end=0.3), draw(gamma=0.3))  # an end equal to the start: the paper's γ
    assert torch.equal(draw(steps=1, gamma=1.0, gamma_end=0.0), draw(steps=1, gamma=1.0))  # one step: the start
    # the first step commits tokens by the content adapter, the last by the style adapter
    content_only, style_only, scheduled = draw(gamma=1.0), draw(gamma=0.0), draw(gamma=1.0, gamma_end=0.0)
    assert not torch.equal(content_only, style_only)
    assert not torch.equal(scheduled, content_only) and not torch.equal(scheduled, style_only)
    with pytest.raises(StylecraftError, match="--gamma-end"):
        SamplingConfig(gamma_end=1.5)


def test_sample_command_stacks_two_adapters_by_default(muse, tiny_muse_dir, tmp_path):
    import json

    from stylecraft.cli import main

    model = _adapters(muse)
    model.add_adapter("lora", model.new_config("lora", rank=2))
    for name in ("style", "content", "lora"):
        model.save_adapter(name, tmp_path / name)
    argv = ["--quiet", "sample", "--model", str(tiny_muse_dir), "--prompt", "a cat in ink style", "--steps", "2"]
    argv += ["--style-adapter", str(tmp_path / "style"), "--num-images", "1"]
    assert main([*argv, "--content-adapter", str(tmp_path / "content"), "--out", str(tmp_path / "out")]) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["compose"] == "stack" and run["content_prompts"] is None  # one forward on the whole prompt
    assert run["sampling"]["lambda_a"] == 0.0  # StyleDrop guidance (Eq. 4) at the model's λA (aMUSEd's: 0)
    # a LoRA cannot be stacked with the paper's adapter this way: one error line that names the other route
    assert main([*argv, "--content-adapter", str(tmp_path / "lora"), "--out", str(tmp_path / "lora-out")]) == 2
    argv += ["--content-adapter", str(tmp_path / "lora"), "--compose", "mix", "--out", str(tmp_path / "mix")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "mix" / "run.json").read_text())["content_prompts"] == ["a cat"]


def test_glyph_detector_of_the_seen_styles_trains_on_them_alone(tmp_path, monkeypatch):
    import json

    from stylecraft.world import renderer
    from stylecraft.world.pretrain import RECIPES, load_recipe
    from stylecraft.world.train_judges import train_glyph_oracle

    recipes = json.loads(RECIPES.read_text())
    assert recipes["glyph-seen"]["extra"]["styles"] == "seen"
    recipe = load_recipe("glyph-seen", overrides={"steps": 1, "warmup": 1, "eval_images": 1, "batch_size": 4})
    drawn = []  # the styles every training batch was drawn from
    original = renderer.sample_scenes

    def recording(n, rng, styles=None):
        drawn.append(styles)
        return original(n, rng, styles)

    monkeypatch.setattr(renderer, "sample_scenes", recording)
    (tmp_path / "seen").mkdir()
    train_glyph_oracle(recipe, tmp_path / "seen", resume=False)
    training = [s for s in drawn if s is None or len(s) > 1]  # the evaluation draws one style at a time
    assert training and all(s == renderer.SEEN_STYLES for s in training)
    assert (tmp_path / "seen" / "glyph_oracle.safetensors").is_file()
    recipe.extra["styles"] = "held-out"
    with pytest.raises(StylecraftError, match="extra.styles"):
        train_glyph_oracle(recipe, tmp_path / "bad", resume=False)
