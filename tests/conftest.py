"""Shared fixtures: everything offline, seeded, tiny."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("STYLECRAFT_QUIET", "1")

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_collection_modifyitems(config, items):
    run_slow = os.environ.get("RUN_SLOW") == "1"
    real = os.environ.get("STYLECRAFT_REAL_MODELS") == "1"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: set RUN_SLOW=1"))
        if "real_models" in item.keywords and not real:
            item.add_marker(pytest.mark.skip(reason="needs real weights: set STYLECRAFT_REAL_MODELS=1"))


@pytest.fixture(scope="session")
def clip_tokenizer():
    """The tiny CLIP tokenizer made from tests/fixtures/tokenizer (no hub)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(FIXTURES / "tokenizer", local_files_only=True)


@pytest.fixture(scope="session")
def tiny_muse_dir(tmp_path_factory, clip_tokenizer):
    """A tiny random Muse model saved in the aMUSEd folder layout."""
    from stylecraft.muse import build_random_muse

    folder = tmp_path_factory.mktemp("tiny-muse")
    build_random_muse("tiny", seed=0, tokenizer=clip_tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory, clip_tokenizer):
    """A tiny random CLIPModel with tokenizer and image processor, saved like a hub CLIP folder."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    ids = dict(
        bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    text = dict(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32)
    torch.manual_seed(0)
    model = CLIPModel(
        CLIPConfig(text_config={**text, **ids}, vision_config={**vision, "patch_size": 8}, projection_dim=8)
    )
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    clip_tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def style_png(tmp_path_factory):
    """A 32x32 random RGB PNG: a valid style image for the tiny models (resized to their 8x8)."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8")).save(path)
    return path


@pytest.fixture
def muse(tiny_muse_dir):
    """A fresh tiny random-weight Muse model (function scope: training may change it)."""
    from stylecraft.muse import load_muse

    return load_muse(tiny_muse_dir)


@pytest.fixture
def image():
    """An 8×8 random RGB image, the same in every test."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.RandomState(0).rand(8, 8, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): two threads of
    tiny models on a shared 2-core machine spin against the other processes (test_world_sd's fixture took 86 s with
    two threads, 26 s with one, imports included)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
