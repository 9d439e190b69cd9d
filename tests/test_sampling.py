"""Our sampling loop: pixel parity with AmusedPipeline, and StyleDrop Eq. 4 / Eq. 5-6 exactly as written."""

import numpy as np
import pytest
import torch

from stylecraft.adapters import AdaptedTransformer
from stylecraft.errors import StylecraftError
from stylecraft.sampling import SamplingConfig, sample_images, sample_tokens


@pytest.mark.parametrize(
    "guidance, negative, temperature, steps",
    [(10.0, None, (2, 0), 12), (1.0, None, (2, 0), 6), (4.0, "a blue cat", (3, 1), 8)],
)
def test_equals_amused_pipeline_pixel_for_pixel(muse, guidance, negative, temperature, steps):
    pipe = muse.reference_pipeline()
    prompts = ["a red house", "a cat in watercolor style"]
    reference = pipe(
        prompts,
        num_images_per_prompt=3,
        guidance_scale=guidance,
        negative_prompt=[negative] * 2 if negative else None,
        num_inference_steps=steps,
        temperature=temperature,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    ).images
    config = SamplingConfig(
        steps=steps, guidance_scale=guidance, negative_prompt=negative or "", temperature=list(temperature)
    )
    ours = sample_images(
        muse, prompts, config, num_images_per_prompt=3, generator=torch.Generator("cpu").manual_seed(7), progress=False
    )
    ours = ours.permute(0, 2, 3, 1).numpy()
    assert reference.shape == ours.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(ours, reference)


def _capture_first_logits(muse, monkeypatch):
    captured = []
    step = muse.scheduler.step

    def recording_step(model_output, timestep, sample, generator=None, **kwargs):
        captured.append(model_output.clone())
        return step(model_output=model_output, timestep=timestep, sample=sample, generator=generator, **kwargs)

    monkeypatch.setattr(muse.scheduler, "step", recording_step)
    return captured


def _forward(muse, model, rows, prompts):
    pooled, hidden = muse.encode_prompts(prompts)
    ids = torch.full((len(prompts), 4, 4), muse.mask_token_id)
    return model(rows, ids, hidden, pooled, muse.micro_conds(len(prompts), 8, 8))


def _trained_like(muse, names):
    model = AdaptedTransformer(muse)
    for seed, name in enumerate(names):
        model.add_adapter(name, model.new_config("styledrop", rank=4))
        with torch.no_grad():
            for p in model.adapter_parameters(name):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3)
    return model


def test_styledrop_guidance_is_equation_4(muse, monkeypatch):
    model = _trained_like(muse, ["style"])
    captured = _capture_first_logits(muse, monkeypatch)
    config = SamplingConfig(steps=2, lambda_a=1.5, lambda_b=5.0, negative_prompt="ugly")
    sample_tokens(
        muse,
        ["a cat"],
        config,
        model=model,
        adapter="style",
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    adapted = _forward(muse, model, ["style"], ["a cat"])
    base = _forward(muse, model, [None], ["a cat"])
    negative = _forward(muse, model, [None], ["ugly"])
    expected = adapted + 1.5 * (adapted - base) + 5.0 * (base - negative)  # StyleDrop Eq. 4
    torch.testing.assert_close(captured[0], expected, atol=1e-4, rtol=1e-4)
    assert config.guidance_scale == 6.0  # λB = g - 1


def test_two_adapter_mixing_is_equation_5_6(muse, monkeypatch):
    model = _trained_like(muse, ["style", "content"])
    captured = _capture_first_logits(muse, monkeypatch)
    config = SamplingConfig(steps=2, guidance_scale=3.0, gamma=0.7)
    sample_tokens(
        muse,
        ["a cat in oil style"],
        config,
        model=model,
        style_adapter="style",
        content_adapter="content",
        content_prompts=["a cat"],
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    s_t, s_n = _forward(muse, model, ["style"], ["a cat in oil style"]), _forward(muse, model, ["style"], [""])
    c_c, c_n = _forward(muse, model, ["content"], ["a cat"]), _forward(muse, model, ["content"], [""])
    style, content = s_n + 3.0 * (s_t - s_n), c_n + 3.0 * (c_c - c_n)
    torch.testing.assert_close(captured[0], 0.3 * style + 0.7 * content, atol=1e-4, rtol=1e-4)


def test_fresh_adapter_with_lambda_a_zero_reduces_to_muse_cfg(muse):
    model = AdaptedTransformer(muse)
    model.add_adapter("style", model.new_config("styledrop", rank=4))
    config = SamplingConfig(steps=4, guidance_scale=6.0, lambda_a=0.0)
    kwargs = dict(num_images_per_prompt=2, progress=False)
    with_adapter = sample_tokens(
        muse, ["a dog"], config, model=model, adapter="style", generator=torch.Generator().manual_seed(1), **kwargs
    )
    plain = sample_tokens(
        muse,
        ["a dog"],
        SamplingConfig(steps=4, guidance_scale=6.0),
        generator=torch.Generator().manual_seed(1),
        **kwargs,
    )
    assert torch.equal(with_adapter, plain)


def test_seeds_and_bad_settings(muse):
    config = SamplingConfig(steps=3)
    a = sample_tokens(muse, ["a cat"], config, generator=torch.Generator().manual_seed(0), progress=False)
    b = sample_tokens(muse, ["a cat"], config, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(a, b)
    with pytest.raises(StylecraftError, match="empty prompt"):
        sample_tokens(muse, ["  "], config, progress=False)
    with pytest.raises(StylecraftError, match="--steps"):
        SamplingConfig(steps=0)
    with pytest.raises(StylecraftError, match="--gamma"):
        SamplingConfig(gamma=1.5)
    with pytest.raises(StylecraftError, match="needs a style adapter, a content adapter"):
        sample_tokens(muse, ["a cat"], config, style_adapter="s", progress=False)
