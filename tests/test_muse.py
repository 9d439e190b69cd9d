"""The Muse backend: loading, prompt encoding, VQ round trip, masking and loss."""

import json

import pytest
import torch

from stylecraft.errors import StylecraftError
from stylecraft.muse import build_random_muse, load_muse, mask_tokens, masked_token_loss


def test_load_folder_matches_built_model(tiny_muse_dir, clip_tokenizer):
    built = build_random_muse("tiny", seed=0, tokenizer=clip_tokenizer)
    loaded = load_muse(tiny_muse_dir)
    assert loaded.fingerprint == built.fingerprint
    assert loaded.mask_token_id == loaded.transformer.config.vocab_size - 1
    for a, b in zip(loaded.transformer.parameters(), built.transformer.parameters(), strict=True):
        assert torch.equal(a, b)
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32


def test_text_encoder_pools_the_eos_token(tiny_muse_dir):
    muse = load_muse(tiny_muse_dir)
    assert muse.text_encoder.config.eos_token_id == muse.tokenizer.eos_token_id
    pooled, hidden = muse.encode_prompts(["a red house", "a blue cat in watercolor style"])
    assert pooled.shape == (2, 32) and hidden.shape == (2, 77, 32)
    # different prompts give different pooled embeddings (pooling position 0 would make them equal)
    assert not torch.allclose(pooled[0], pooled[1])


def test_long_prompt_is_truncated_with_warning(tiny_muse_dir, caplog):
    muse = load_muse(tiny_muse_dir)
    ids = muse.tokenize(["red " * 200])
    assert ids.shape == (1, 77)
    assert "truncated" in caplog.text


def test_images_tokens_round_trip_shapes(tiny_muse_dir):
    muse = load_muse(tiny_muse_dir)
    images = torch.rand(3, 3, muse.resolution, muse.resolution)
    tokens = muse.encode_images(images)
    assert tokens.shape == (3, 4, 4) and tokens.dtype == torch.long
    assert int(tokens.max()) < muse.vqvae.config.num_vq_embeddings
    decoded = muse.decode_tokens(tokens)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    assert torch.equal(muse.encode_images(decoded), muse.encode_images(decoded))


def test_cosine_mask_schedule_and_loss():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 32, (512, 4, 4), generator=generator)
    masked, mask = mask_tokens(tokens, 32, generator)
    assert torch.equal(masked[mask], torch.full_like(masked[mask], 32))
    assert torch.equal(masked[~mask], tokens[~mask])
    assert mask.flatten(1).sum(1).min() >= 1
    # E[cos(pi u / 2)] = 2 / pi for u ~ U[0, 1)
    assert abs(mask.float().mean().item() - 2 / torch.pi) < 0.05
    logits = torch.zeros(512, 32, 4, 4)
    logits.scatter_(1, tokens[:, None], 50.0)  # a perfect prediction
    assert masked_token_loss(logits, tokens, mask).item() < 1e-6


def test_masked_token_loss_weights_positions():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 16, (4, 2, 2), generator=generator)
    logits = torch.randn(4, 16, 2, 2, generator=generator)
    mask = torch.ones(4, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = False
    plain = masked_token_loss(logits, tokens, mask)
    assert torch.allclose(masked_token_loss(logits, tokens, mask, torch.full((4, 2, 2), 3.0)), plain)
    per_position = torch.nn.functional.cross_entropy(logits, tokens, reduction="none")
    worst = (per_position * mask).flatten().argmax()
    weights = torch.ones(16)
    weights[worst] = 5.0
    weighted = masked_token_loss(logits, tokens, mask, weights.reshape(4, 2, 2))
    assert weighted > plain  # the worst-predicted position counts five times
    expected = (per_position[mask] * weights.reshape(4, 2, 2)[mask]).sum() / weights.reshape(4, 2, 2)[mask].sum()
    assert torch.allclose(weighted, expected)


@pytest.mark.parametrize(
    "name, message",
    [("no/such/model/here", "not a folder"), ("./missing-folder", "not a folder")],
)
def test_unknown_model_is_a_clear_error(name, message):
    with pytest.raises(StylecraftError, match=message):
        load_muse(name)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(StylecraftError, match="could not load model 'amused/amused-256'"):
        load_muse("amused/amused-256")


def test_incomplete_folder_names_missing_parts(tiny_muse_dir, tmp_path):
    (tmp_path / "transformer").mkdir()
    with pytest.raises(StylecraftError, match="missing vqvae/"):
        load_muse(tmp_path)


def test_mismatched_eos_id_is_refused(tiny_muse_dir, tmp_path):
    import shutil

    broken = tmp_path / "m"
    shutil.copytree(tiny_muse_dir, broken)
    config_path = broken / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = 2
    config_path.write_text(json.dumps(config))
    with pytest.raises(StylecraftError, match="eos_token_id"):
        load_muse(broken)


@pytest.mark.slow
def test_amused_256_architecture_builds():
    muse = build_random_muse("amused-256")
    n = sum(p.numel() for p in muse.transformer.parameters())
    assert 600e6 < n < 610e6
    assert muse.resolution == 256


def test_shift_grid_moves_the_grid_and_repeats_its_edges():
    from stylecraft.muse import shift_grid, shift_offsets

    grid = torch.arange(9).reshape(1, 3, 3)
    assert shift_grid(grid, 1, 0).tolist() == [[[0, 0, 1], [3, 3, 4], [6, 6, 7]]]
    assert shift_grid(grid, 0, -1).tolist() == [[[3, 4, 5], [6, 7, 8], [6, 7, 8]]]
    assert torch.equal(shift_grid(grid, 0, 0), grid)
    pixels = torch.rand(2, 3, 8, 8)  # any leading dimensions: channels move together
    assert torch.equal(shift_grid(pixels, -2, 1)[..., 1:, :6], pixels[..., :7, 2:])
    offsets = shift_offsets(1)
    assert offsets[0] == (0, 0) and len(offsets) == len(set(offsets)) == 9
    assert shift_offsets(0) == [(0, 0)]


def test_a_model_folder_says_what_it_is(tmp_path, tiny_muse_dir):
    """model_index.json (diffusers' index plus our "_stylecraft" defaults) decides the classes and settings a folder
    loads with; muse.py knows nothing of the shapes world (issue 31)."""
    import ast
    from pathlib import Path

    import stylecraft.muse
    from stylecraft.training import default_recipe

    tree = ast.parse(Path(stylecraft.muse.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if "world" in m]

    muse = load_muse(tiny_muse_dir)
    muse.sampling_defaults, muse.recipes = {"guidance_scale": 3.0, "lambda_a": 0.25}, {"round1": "shapes-round1"}
    muse.save_pretrained(tmp_path / "m")
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "UVit2DModel"] and index["vqvae"] == ["diffusers", "VQModel"]
    reloaded = load_muse(tmp_path / "m")
    assert reloaded.sampling_defaults == {"guidance_scale": 3.0, "lambda_a": 0.25}
    assert default_recipe(str(tmp_path / "m")) == "shapes-round1"
    assert default_recipe(str(tmp_path / "m"), "round2") == "round2"  # not named: the paper's

    # a folder may name only diffusers or stylecraft classes, of the right kind, and well-formed settings
    for entry, match in (
        (["os", "system"], "only diffusers and stylecraft"),
        (["diffusers", "VQModel"], "not a UVit2DModel"),
        ("UVit2DModel", "must be \\[library, class\\]"),
    ):
        (tmp_path / "m" / "model_index.json").write_text(json.dumps({**index, "transformer": entry}))
        with pytest.raises(StylecraftError, match=match):
            load_muse(tmp_path / "m")
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({**index, "_stylecraft": {"sampling": {"cfg": 1}}}))
    with pytest.raises(StylecraftError, match="_stylecraft"):
        load_muse(tmp_path / "m")
    (tmp_path / "m" / "model_index.json").write_text("{not json")
    with pytest.raises(StylecraftError, match="not valid JSON"):
        load_muse(tmp_path / "m")
