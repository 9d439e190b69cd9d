"""The shapes world: renderer, captions, oracles and the shipped mini models (offline, shipped weights)."""

import numpy as np
import pytest
import torch

from stylecraft.world import (
    COLOUR_NAMES,
    HELD_OUT_STYLES,
    SEEN_STYLES,
    SHAPES,
    STYLES,
    caption,
    parse_caption,
    render_batch,
    render_prompts,
    shapes_clip_dir,
    shapes_model_dir,
    stream,
    vocabulary,
)
from stylecraft.world.oracles import labels_from_prompts, load_oracles, oracle_accuracy


def test_world_size_and_held_out_styles():
    assert len(SHAPES) >= 8 and len(COLOUR_NAMES) >= 8 and len(STYLES) >= 12
    assert len(HELD_OUT_STYLES) >= 3 and set(HELD_OUT_STYLES) <= set(STYLES)
    assert not set(SEEN_STYLES) & set(HELD_OUT_STYLES)


def test_render_is_deterministic_and_varied():
    a, scenes = render_batch(64, seed=3)
    b, _ = render_batch(64, seed=3)
    c, _ = render_batch(64, seed=4)
    assert a.shape == (64, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len({img.tobytes() for img in a}) == 64
    # Every style draws something other than its background: pixels differ inside the image.
    assert (a.reshape(64, -1, 3).std(axis=1).mean(axis=1) > 5).all()


def test_stream_batches_are_seeded_by_position():
    first = [images for images, _ in zip(range(2), stream(8, seed=1), strict=False)]
    again = [images for images, _ in zip(range(2), stream(8, seed=1), strict=False)]
    assert np.array_equal(first[1], again[1]) and not np.array_equal(first[0], first[1])


def test_seen_styles_only_when_asked():
    _, scenes = render_batch(200, seed=0, styles=SEEN_STYLES)
    assert {STYLES[s] for s in scenes.style} <= set(SEEN_STYLES)


def test_captions_round_trip():
    _, scenes = render_batch(100, seed=5)
    for text, style, shape in zip(scenes.captions(), scenes.style, scenes.shape, strict=True):
        parsed = parse_caption(text)
        assert parsed["style"] == STYLES[style] and parsed["shape"] == SHAPES[shape]
        assert caption(**{k: v for k, v in parsed.items() if v is not None}) == text
        assert set(text.split()) <= set(vocabulary())
    assert parse_caption("a red star")["style"] is None
    with pytest.raises(ValueError, match="not a shapes-world caption"):
        parse_caption("a photo of a dog")


def test_render_prompts_follows_the_caption():
    images = render_prompts(["a large red circle in flat color style", "a small blue square on the left"])
    assert images.shape == (2, 64, 64, 3)
    red = images[0, 28:36, 28:36].reshape(-1, 3).mean(0)
    assert red[0] > 150 and red[1] < 100
    assert images[1, 28:36, 14:24, 0].mean() + 100 < images[1, 28:36, 44:54, 0].mean()  # blue on the left


def test_oracles_are_accurate_on_fresh_renders_of_every_style():
    oracles = load_oracles()
    images, scenes = render_batch(len(STYLES) * 24, seed=2024)
    acc = oracle_accuracy(oracles, images, scenes.labels())
    assert acc["shape"] >= 0.95 and acc["colour"] >= 0.95 and acc["style"] >= 0.95, acc
    # Captions work as targets too, and float tensors as inputs.
    tensor = torch.from_numpy(images[:16]).permute(0, 3, 1, 2).float() / 255
    assert oracle_accuracy(oracles, tensor, scenes.captions()[:16])["colour"] >= 0.9
    assert labels_from_prompts(["a red star"])["style"][0] == -1


def test_shipped_muse_loads_offline_and_round_trips_through_the_vq():
    from stylecraft.muse import load_muse

    model = load_muse("shapes")
    assert model.resolution == 64 and model.transformer.config.sample_size == 8
    assert model.text_encoder.config.eos_token_id == model.tokenizer.eos_token_id
    images, scenes = render_batch(len(STYLES) * 4, seed=77)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    tokens = model.encode_images(x)
    assert tokens.shape == (len(images), 8, 8)
    recon = model.decode_tokens(tokens)
    assert recon.shape == x.shape and torch.mean((recon - x) ** 2) < 0.03
    pooled, hidden = model.encode_prompts(scenes.captions()[:2])
    assert pooled.shape[0] == 2 and hidden.shape[:2] == (2, model.tokenizer.model_max_length)


def test_shipped_clip_ranks_the_true_caption_first():
    from transformers import CLIPModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(shapes_clip_dir(), local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(shapes_clip_dir(), local_files_only=True)
    images = render_prompts([f"a large {c} circle in flat color style" for c in ("red", "blue", "green")], seed=1)
    texts = [f"a large {c} circle in flat color style" for c in ("red", "blue", "green")]
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        logits = clip(input_ids=ids.input_ids, pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1)
    assert logits.logits_per_image.argmax(1).tolist() == [0, 1, 2]


def test_shipped_weights_are_small_safetensors():
    weights = shapes_model_dir().parent
    files = [p for p in weights.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 60 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
