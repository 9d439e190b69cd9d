"""The shipped shapes-sd (world/weights/shapes-sd): `stylecraft instantstyle` uses it when --model is omitted, and its
IP-Adapter carries a held-out family's style into a picture (the trained weights, not a tiny stand-in)."""

import json

import numpy as np
import pytest
from PIL import Image

from stylecraft import instantstyle
from stylecraft.world import WEIGHTS
from stylecraft.world.space_eval import family_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dark_reference(tmp_path_factory):
    """A held-out family's reference drawn on a near-black ground (dashed outline: no model saw the family)."""
    task = family_task("dashed outline", 4)
    assert task.reference.mean() < 60  # the ground this test looks for in the outputs
    path = tmp_path_factory.mktemp("reference") / "dashed-outline.png"
    Image.fromarray(task.reference).save(path)
    return path, task.prompts(with_style=False)


def test_instantstyle_without_model_draws_with_the_shipped_shapes_sd(dark_reference, tmp_path):
    from stylecraft.cli import main

    assert instantstyle.DEFAULT_MODEL == WEIGHTS / "shapes-sd" and instantstyle.DEFAULT_MODEL.is_dir()
    reference, prompts = dark_reference
    args = ["instantstyle", "--style-image", str(reference), "--prompt", prompts[0], "--steps", "10"]
    assert main([*args, "--num-images", "2", "--out", str(tmp_path / "out")]) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["model"] == str(WEIGHTS / "shapes-sd") and run["block_keys"]  # the model's declared style preset
    assert Image.open(tmp_path / "out" / "000.png").size == (64, 64)


def test_shipped_ip_adapter_carries_the_references_dark_ground(dark_reference):
    """The same prompts and seeds with the adapter off (scale 0) and on in every block: on, the pictures take the
    reference's near-black ground (the base draws these prompts on light grounds)."""
    style = instantstyle.load_instantstyle()
    reference, prompts = dark_reference
    embeds = style.encode_style(reference)[0]

    def brightness(scale: float) -> float:
        pictures = [
            style(prompt, style_embeds=embeds, blocks="all", scale=scale, steps=15, seed=k).images[0]
            for k, prompt in enumerate(prompts)
        ]
        return float(np.mean([np.asarray(picture, dtype=np.float32) for picture in pictures]))

    off, on = brightness(0.0), brightness(1.0)
    assert off > 150 and on < off - 60, (off, on)
