"""World v2 training batches (space.mixed_batch, space.recipe_batch) and the held-out family measurements
(world/space_eval.py): what the shapes-sd stages train on and how their results are judged."""

import numpy as np
import pytest

from stylecraft.errors import StylecraftError
from stylecraft.world import renderer, space, space_eval
from stylecraft.world.oracles import load_oracles


def test_mixed_batches_are_drawn_by_seed_and_step_and_never_hold_a_held_out_style():
    a, b = space.mixed_batch(64, [3, 7]), space.mixed_batch(64, [3, 7])
    assert np.array_equal(a.images, b.images) and a.captions == b.captions  # batch i drawn directly: resumable
    assert not np.array_equal(a.images, space.mixed_batch(64, [3, 8]).images)
    named = a.style_ids < 0
    assert 0 < named.sum() < 64  # both kinds in one batch (a quarter named by default)
    assert np.isin(a.style_ids[~named], space.SEEN_IDS).all()
    assert all(renderer.STYLES[s] in renderer.SEEN_STYLES for s in a.scenes.style[named])
    assert (a.scenes.style[~named] == -1).all()  # the oracles' style head has no class for a space style
    for k in np.flatnonzero(~named)[:5]:  # captions name the space style by its descriptor
        assert space.parse_caption(a.captions[k])["style_id"] == a.style_ids[k]


def test_recipe_batch_named_is_the_v1_stream_and_space_switches_to_the_mix():
    batch = space.recipe_batch({}, 8, 5, 2, renderer.SEEN_STYLES)
    rng = np.random.default_rng([5, 2])  # what shapes-sd's stages drew before world v2
    scenes = renderer.sample_scenes(8, rng, renderer.SEEN_STYLES)
    assert np.array_equal(batch.images, renderer.render(scenes, rng)) and batch.captions == scenes.captions()
    mixed = space.recipe_batch({"data": "space", "named_fraction": 0.0}, 8, 5, 2)
    assert (mixed.style_ids >= 0).all()
    with pytest.raises(StylecraftError, match="extra.data"):
        space.recipe_batch({"data": "photos"}, 8, 5, 2)


def test_space_vocabulary_holds_every_caption_word():
    words = set(space.vocabulary())
    for caption in space.mixed_batch(256, 1).captions:
        assert set(caption.replace(",", " ").split()) <= words


@pytest.fixture(scope="module")
def oracles():
    return load_oracles()


def test_family_task_asks_for_other_content_and_true_renders_match_its_style(oracles):
    task = space_eval.family_task("duotone", num_prompts=24)
    assert task.family == "duotone" and space.family(task.style_id) == "duotone"
    assert task.candidate_ids[0] == task.style_id and len(set(task.candidate_ids)) == space_eval.CANDIDATES
    assert np.isin(task.candidate_ids, space.HELD_OUT_IDS).all()
    assert "circle" not in " ".join(task.prompts()) and " red " not in " ".join(task.prompts())
    truth = space_eval.measure_family(space.render_captions(task.prompts(), 3), task, oracles)
    assert truth["style_match"] >= 0.9 and truth["content"] >= 0.9 and truth["leakage"] <= 0.1
    # the reference itself, copied: the right style but the reference's content, so all leakage
    copies = space_eval.measure_family(np.repeat(task.reference[None], 24, 0), task, oracles)
    assert copies["style_match"] >= 0.9 and copies["leakage"] == 1.0 and copies["content"] == 0.0
    # another family's renders of the asked prompts: right content, wrong style
    other = space_eval.family_task("halftone", num_prompts=24)
    wrong = space.render_captions(
        [p.replace(space.describe(other.style_id), space.describe(task.style_id)) for p in other.prompts()], 3
    )
    assert space_eval.measure_family(wrong, other, oracles)["style_match"] <= 0.2


def test_prompted_task_style_is_the_asked_one_among_fifty(oracles):
    task = space_eval.prompted_task(32, seed=4)
    assert np.isin(task.style_ids, task.candidate_ids).all()
    result = space_eval.measure_prompted(space.render_captions(task.prompts(), 1), task, oracles)
    assert result["style"] >= 0.85 and result["shape"] >= 0.9
    shuffled = space_eval.PromptedTask(task.scenes, np.roll(task.style_ids, 1), task.candidate_ids, task.candidates)
    assert space_eval.measure_prompted(space.render_captions(task.prompts(), 1), shuffled, oracles)["style"] < 0.3


def test_style_retrieval_of_identity_is_perfect_and_of_a_flat_fill_is_not():
    assert space_eval.style_retrieval(lambda x: x, "halftone", 0) == 1.0
    grey = space_eval.style_retrieval(lambda x: np.full_like(x, 128), "halftone", 0)
    assert grey <= 0.1
