"""World v2's Muse chain (issue #28): the VQ and Muse-mini stages on the style space, seconds-long runs."""

import json

import pytest
import torch

from stylecraft.world import shapes_clip_dir
from stylecraft.world.pretrain import RECIPES, main
from stylecraft.world.space import HELD_OUT_FAMILIES, SEEN

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY_VQ = {"block_out_channels": [8, 8, 16], "num_vq_embeddings": 32}  # three levels: a 16 x 16 token grid


def _cut(tmp_path, section: str, model: dict | None = None, **extra) -> str:
    """The packaged recipe file with ``section`` cut down to a seconds-long run (and a smaller model)."""
    recipes = json.loads(RECIPES.read_text())
    recipes[section].update(steps=2, warmup=1, log_every=1, eval_images=2, checkpoint_every=1)
    recipes[section].setdefault("model", {}).update(model or {})
    recipes[section]["extra"].update(extra)
    path = tmp_path / f"{section}.json"
    path.write_text(json.dumps(recipes))
    return str(path)


def _vq(tmp_path, name: str = "vq", **extra):
    recipe = _cut(tmp_path, "vq-v2-16", TINY_VQ, **extra)
    main(["vq", "--section", "vq-v2-16", "--recipe", recipe, "--out", str(tmp_path / name), "--threads", "1"])
    return tmp_path / name


def test_a_vq_stage_on_the_space_tokenizes_16_by_16_and_reports_every_family(tmp_path):
    from stylecraft.world.space import mixed_batch
    from stylecraft.world.train_vq import reconstruct
    from stylecraft.world.vq import WorldVQModel

    run = _vq(tmp_path, autoencoder_steps=0)
    record = json.loads((run / "training.json").read_text())
    assert record["recipe"]["extra"]["data"] == "space"
    # each family of the space, held-out ones (never trained on) included, judged as an autoencoder
    assert set(record["metrics"]["space"]) == {SEEN, *HELD_OUT_FAMILIES}
    assert {"reconstruction_shape", "style_retrieval"} <= set(record["metrics"]["space"]["halftone"])
    vq = WorldVQModel.from_pretrained(run / "vqvae").eval()
    images = mixed_batch(3, 0).images
    with torch.no_grad():
        tokens = vq.quantize(vq.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).latents)[2][2]
    assert tokens.numel() == 3 * 16 * 16  # three levels: 64 px in, a 16 x 16 token grid
    assert reconstruct(vq, images).shape == (3, 3, 64, 64)


def test_a_vq_stage_on_the_space_resumes_its_batch_stream(tmp_path):
    # stopped after one step and resumed, it ends where an uninterrupted run ends (batch i comes from (seed, i))
    whole = _vq(tmp_path, "whole", autoencoder_steps=0)
    recipe = _cut(tmp_path, "vq-v2-16", TINY_VQ, autoencoder_steps=0)
    command = ["vq", "--section", "vq-v2-16", "--recipe", recipe, "--out", str(tmp_path / "parts"), "--threads", "1"]
    main([*command, "--steps", "1"])
    main([*command, "--resume"])
    losses = [
        [entry["loss"] for entry in json.loads((run / "training.json").read_text())["history"] if "loss" in entry]
        for run in (whole, tmp_path / "parts")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_a_vq_stage_on_the_space_refuses_the_named_streams_edge_weights(tmp_path):
    recipe = _cut(tmp_path, "vq-v2-16", edge_weight=4.0)
    with pytest.raises(SystemExit, match="take.* extra.pooled_weight instead"):
        main(["vq", "--section", "vq-v2-16", "--recipe", recipe, "--out", str(tmp_path / "bad"), "--threads", "1"])


def test_a_muse_stage_on_the_space_trains_on_its_captions_and_measures_held_out_styles(tmp_path):
    from stylecraft.muse import load_muse

    vq = _vq(tmp_path, autoencoder_steps=0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "in_channels": 16}
    small |= {"block_out_channels": 16, "micro_cond_encode_dim": 4, "micro_cond_embed_dim": 20}
    evaluation = {"images": 2, "steps": 2, "guidance": 2.0}
    recipe = _cut(tmp_path, "muse-v2-16", small, pool_size=1024, eval=evaluation)
    clip = shapes_clip_dir().parent  # a folder with clip/ in it, as a clip stage's run has
    command = ["muse", "--section", "muse-v2-16", "--recipe", recipe, "--vq", str(vq), "--clip", str(clip)]
    main([*command, "--out", str(tmp_path / "run"), "--threads", "1"])
    record = json.loads((tmp_path / "run" / "training.json").read_text())
    assert record["history"][-1]["finished"]
    for group in ("seen", "held_out"):  # prompts naming the space's styles, judged by the style judge
        assert {"shape", "colour", "style"} <= set(record["metrics"]["space"][group])
    muse = load_muse(str(tmp_path / "run" / "muse"))
    assert muse.transformer.config.sample_size == 16 and muse.transformer.config.downsample  # 16 x 16 tokens
    recipe = _cut(tmp_path, "muse-v2-16", small, outline_weight=8.0)
    with pytest.raises(SystemExit, match="outline_weight and extra.small_fraction work on the named-style pool"):
        main([*command[:4], recipe, *command[5:], "--out", str(tmp_path / "bad"), "--threads", "1"])
