"""The shapes world's style space (world/space.py): ids, descriptors, the held-out split, rendering, the CLI."""

import numpy as np
import pytest
from PIL import Image

from stylecraft.cli import main
from stylecraft.world import space
from stylecraft.world.renderer import STYLES, render_prompts, sample_scenes


def test_every_id_has_its_own_descriptor_and_back():
    descriptors = [space.describe(i) for i in range(space.NUM_STYLES)]
    assert space.NUM_STYLES >= 10_000 and len(set(descriptors)) == space.NUM_STYLES
    assert all(space.style_id(d) == i for i, d in enumerate(descriptors))
    with pytest.raises(ValueError, match="not a style of the space"):
        space.style_id("hatched fill, rainbow outline, plain ground")


def test_descriptors_use_only_the_listed_vocabulary():
    assert len(space.VOCABULARY) <= 40
    words = {w for i in range(space.NUM_STYLES) for w in space.describe(i).replace(",", " ").split()}
    assert words == set(space.VOCABULARY)


def test_held_out_families_never_meet_a_seen_style():
    seen = [space.factors(i) for i in space.SEEN_IDS]
    assert len(space.HELD_OUT_FAMILIES) >= 8
    assert len(space.SEEN_IDS) + len(space.HELD_OUT_IDS) == space.NUM_STYLES
    for name, rule in space.HELD_OUT_FAMILIES.items():
        members = space.family_ids(name)
        assert len(members) >= 100, name
        assert all(space.family(i) == name for i in members)
        assert all(all(space.factors(i)[f] == v for f, v in rule.items()) for i in members)
        assert not any(all(style[f] == v for f, v in rule.items()) for style in seen), name
        if len(rule) > 1:  # a combination family: each of its values alone is seen
            assert all(any(style[f] == v for style in seen) for f, v in rule.items()), name
    for factor, values in space.FACTORS.items():  # every factor keeps seen values
        assert len({style[factor] for style in seen}) >= len(values) - 1


def test_rendering_is_deterministic_and_every_style_draws_differently():
    a, scenes, ids = space.render_batch(96, seed=3)
    b, _, _ = space.render_batch(96, seed=3)
    c, _, _ = space.render_batch(96, seed=4)
    assert a.shape == (96, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.isin(ids, space.SEEN_IDS).all()
    _, _, held = space.render_batch(96, seed=3, held_out=True)
    assert np.isin(held, space.HELD_OUT_IDS).all()
    # One scene in 64 styles: 64 different images.
    one = sample_scenes(1, np.random.default_rng(0))
    scenes = type(one)(**{k: np.repeat(v, 64) for k, v in one.labels().items()})
    images = space.render_styles(scenes, np.arange(0, space.NUM_STYLES, space.NUM_STYLES // 64)[:64], seed=0)
    assert len({img.tobytes() for img in images}) == 64


def test_the_shape_stands_out_in_every_held_out_family():
    # The shape's edge band differs from the ground away from it, in every render: nothing erases the content.
    from stylecraft.world.renderer import _distance_fields

    for name in space.HELD_OUT_FAMILIES:
        rng = np.random.default_rng(1)
        scenes = sample_scenes(64, rng)
        ids = space.family_ids(name)[rng.integers(len(space.family_ids(name)), size=64)]
        images = space.render_styles(scenes, ids, seed=7).astype(np.float32) / 255
        sdf = _distance_fields(scenes, np.random.default_rng(7))  # render_styles' first draws
        for image, field in zip(images, sdf, strict=True):
            edge, far = image[np.abs(field) < 1.5].mean(0), image[field > 8].mean(0)
            assert np.abs(edge - far).max() > 0.08, name


def test_captions_parse_back_and_render_the_same_pixels():
    images, scenes, ids = space.render_batch(16, seed=5)
    prompts = space.captions(scenes, ids)
    assert prompts[0].startswith("a ") and prompts[0].endswith(" style")
    for prompt, i in zip(prompts, ids, strict=True):
        parsed = space.parse_caption(prompt)
        assert parsed["style_id"] == i and parsed["style"] == space.describe(i)
    again = space.render_captions(prompts, seed=5)
    assert np.array_equal(again, space.render_styles(scenes, ids, seed=5))


def test_named_styles_render_as_the_renderer_draws_them():
    prompts = [f"a large red star in {style} style" for style in STYLES] + ["a small blue moon on the left"]
    assert np.array_equal(space.render_captions(prompts, seed=2), render_prompts(prompts, seed=2))
    parsed = space.parse_caption("a small blue square at the top in outline style")
    assert parsed["style"] == "outline" and parsed["style_id"] is None and parsed["position"] == "at the top"
    mixed = space.render_captions([prompts[0], space.captions(*space.render_batch(1, seed=0)[1:])[0]], seed=2)
    assert np.array_equal(mixed[0], render_prompts(prompts[:1], seed=2)[0])


def test_world_styles_command_prints_and_writes_its_sheet(tmp_path, capsys):
    assert main(["world", "styles", "--held-out", "--count", "9", "--seed", "1", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in space.HELD_OUT_FAMILIES)  # 9 rows take the 9 families in turn
    sheet = np.asarray(Image.open(tmp_path / "held-out.png"))
    assert sheet.shape == (9 * 66, 8 * 66, 3) and sheet.std() > 20
    assert main(["world", "styles", "--count", "0", "--out", str(tmp_path)]) == 2
    assert "error: --count must be between 1 and 200" in capsys.readouterr().err
