"""StyleDrop's bottleneck adapter and peft LoRA: structure, per-row routing, files, and wrong-base errors."""

import json

import pytest
import torch

from stylecraft.adapters import AdaptedTransformer, StyleDropAdapter, count_parameters, read_adapter
from stylecraft.errors import StylecraftError
from stylecraft.muse import build_random_muse, load_muse


def _inputs(muse, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, muse.mask_token_id + 1, (batch, 4, 4), generator=g)
    pooled, hidden = muse.encode_prompts(["a red house", "a cat", ""][:batch] + ["a dog"] * max(0, batch - 3))
    return ids, hidden, pooled, muse.micro_conds(batch, 8, 8)


# Sites after the transformer layers, one of each kind: a Linear, an attention and a channels-first Conv2d.
EXTRA_SITES = ["project_from_hidden", "up_block.attention_blocks.0.attn2", "mlm_layer.conv1"]


def _config(model, adapter_type, **kwargs):
    """``adapter_type`` "styledrop+extra": the paper's adapter plus adapters at EXTRA_SITES."""
    if adapter_type == "styledrop+extra":
        return model.new_config("styledrop", extra_sites=EXTRA_SITES, **kwargs)
    return model.new_config(adapter_type, **kwargs)


def _perturb(model, name, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(name):
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def test_styledrop_adapter_matches_the_paper():
    adapter = StyleDropAdapter(num_layers=22, hidden_size=1024, rank=32)
    assert adapter.down.shape == (22, 2, 1024, 32) and adapter.up.shape == (22, 2, 32, 1024)
    assert torch.count_nonzero(adapter.up) == 0  # zero-init: a fresh adapter is a no-op
    assert abs(adapter.down.std().item() - 0.02 * 0.8796) < 0.001  # N(0, 0.02) cut at 2 std has std 0.88 x 0.02
    assert adapter.down.abs().max() <= 0.04 + 1e-6  # truncated at 2 std
    shared = StyleDropAdapter(num_layers=22, hidden_size=1024, rank=4, shared=True)
    # one D×H and one H×D matrix plus per-(layer, site) H and D offsets
    assert count_parameters(shared) == 2 * 1024 * 4 + 22 * 2 * (4 + 1024)
    x = torch.randn(2, 5, 1024)
    assert torch.equal(adapter.delta(x, 3, 1), torch.zeros_like(x))


@pytest.mark.parametrize("adapter_type", ["styledrop", "styledrop+extra", "lora"])
def test_fresh_adapter_is_a_no_op_and_rows_are_routed(muse, adapter_type):
    model = AdaptedTransformer(muse)
    model.add_adapter("style", _config(model, adapter_type, rank=4))
    ids, hidden, pooled, micro = _inputs(muse)
    base = model([None] * 3, ids, hidden, pooled, micro)
    assert torch.allclose(model(["style"] * 3, ids, hidden, pooled, micro), base, atol=1e-6)

    _perturb(model, "style")
    adapted_all = model(["style"] * 3, ids, hidden, pooled, micro)
    mixed = model(["style", None, "style"], ids, hidden, pooled, micro)
    assert not torch.allclose(adapted_all, base, atol=1e-4)
    torch.testing.assert_close(mixed[0], adapted_all[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[2], adapted_all[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], base[1], atol=1e-5, rtol=1e-5)
    # outside a routed forward the transformer is the untouched base model
    torch.testing.assert_close(muse.transformer(ids, hidden, pooled, micro), base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("adapter_type", ["styledrop", "styledrop+extra", "lora"])
def test_wrappers_reusing_one_base_each_apply_their_own_adapter(muse, adapter_type):
    """A loaded base is reused across calls (the Python API, the feedback page): a later wrapper's adapter must
    act, an earlier one's must not, and wrappers must not pile hooks onto the shared transformer."""
    ids, hidden, pooled, micro = _inputs(muse)
    first = AdaptedTransformer(muse)
    first.add_adapter("adapter", _config(first, adapter_type, rank=4))
    _perturb(first, "adapter", 1)
    base = first([None] * 3, ids, hidden, pooled, micro)
    from_first = first(["adapter"] * 3, ids, hidden, pooled, micro)

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in muse.transformer.modules())

    count = hooks()
    second = AdaptedTransformer(muse)
    second.add_adapter("adapter", _config(second, adapter_type, rank=4))
    _perturb(second, "adapter", 2)
    from_second = second(["adapter"] * 3, ids, hidden, pooled, micro)
    assert not torch.allclose(from_second, base, atol=1e-4)
    assert not torch.allclose(from_second, from_first, atol=1e-4)
    torch.testing.assert_close(second([None] * 3, ids, hidden, pooled, micro), base, atol=1e-5, rtol=1e-5)
    # the first wrapper still samples its own adapter: a LoRA of the same name did not replace it in the shared layers
    torch.testing.assert_close(first(["adapter"] * 3, ids, hidden, pooled, micro), from_first, atol=1e-5, rtol=1e-5)
    for _ in range(3):
        AdaptedTransformer(muse)
    assert hooks() == count
    torch.testing.assert_close(muse.transformer(ids, hidden, pooled, micro), base, atol=1e-5, rtol=1e-5)


def _lora_names_in(transformer) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {name for m in transformer.modules() if isinstance(m, LoraLayer) for name in m.lora_A}


@pytest.mark.parametrize("adapter_type", ["styledrop", "styledrop+extra", "lora"])
def test_removed_or_dropped_adapters_free_their_weights(muse, adapter_type):
    """A LoRA lives in the shared base's layers: removing it, or dropping the wrapper that holds it, must take it
    out of them (a base reused for many samples or rounds would otherwise keep every LoRA), and leave another
    wrapper's adapter working as before."""
    import gc

    ids, hidden, pooled, micro = _inputs(muse)
    keeper = AdaptedTransformer(muse)
    keeper.add_adapter("adapter", _config(keeper, adapter_type, rank=4))
    _perturb(keeper, "adapter", 1)
    kept = keeper(["adapter"] * 3, ids, hidden, pooled, micro)
    base = keeper([None] * 3, ids, hidden, pooled, micro)
    before = _lora_names_in(muse.transformer)

    dropped = AdaptedTransformer(muse)
    dropped.add_adapter("adapter", _config(dropped, adapter_type, rank=4))
    dropped.add_adapter("other", _config(dropped, adapter_type, rank=4))
    _perturb(dropped, "other", 2)
    assert not torch.allclose(dropped(["other"] * 3, ids, hidden, pooled, micro), base, atol=1e-4)
    dropped.remove_adapter("other")
    assert sorted(dropped.configs) == ["adapter"] and "other" not in dropped.styledrop
    with pytest.raises(StylecraftError, match="no adapter named 'other'"):
        dropped(["other"] * 3, ids, hidden, pooled, micro)
    if adapter_type == "lora":
        assert len(_lora_names_in(muse.transformer)) == len(before) + 1  # "adapter" of `dropped` only
    del dropped
    gc.collect()

    assert _lora_names_in(muse.transformer) == before
    torch.testing.assert_close(keeper(["adapter"] * 3, ids, hidden, pooled, micro), kept, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(keeper([None] * 3, ids, hidden, pooled, micro), base, atol=1e-5, rtol=1e-5)
    mixed = keeper(["adapter", None, "adapter"], ids, hidden, pooled, micro)  # peft's mixed-batch path
    torch.testing.assert_close(mixed[::2], kept[::2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], base[1], atol=1e-5, rtol=1e-5)
    assert all(p.requires_grad for p in keeper.adapter_parameters("adapter"))  # nothing promoted or frozen
    keeper.remove_adapter("adapter")
    assert _lora_names_in(muse.transformer) == set()
    torch.testing.assert_close(muse.transformer(ids, hidden, pooled, micro), base, atol=1e-5, rtol=1e-5)


def test_extra_sites_adapt_only_their_modules(muse):
    """An adapter at extra sites (not in the paper) adds ``up(gelu(down(x)))`` to each named module's output over its
    channels, with its own weights per site; the paper's sites keep their stacked weights."""
    model = AdaptedTransformer(muse)
    model.add_adapter("a", model.new_config("styledrop", rank=2, shared=True, extra_sites=EXTRA_SITES))
    adapter, width = model.styledrop["a"], muse.transformer.config.block_out_channels
    in_channels = muse.transformer.config.in_channels
    assert [tuple(d.shape) for d in adapter.extra_down] == [(width, 2), (width, 2), (in_channels, 2)]
    paper_only = StyleDropAdapter(adapter.num_layers, adapter.hidden_size, 2, shared=True)
    assert count_parameters(adapter) == count_parameters(paper_only) + 2 * 2 * (2 * width + in_channels)
    _perturb(model, "a")

    # The head's conv output is channels first: the adapter acts over its channels. Check it against the conv's
    # input and the next module's input, caught in one routed forward.
    head, seen = muse.transformer.mlm_layer, {}
    hooks = [
        head.conv1.register_forward_pre_hook(lambda module, args: seen.setdefault("conv_in", args[0])),
        head.layer_norm.register_forward_pre_hook(lambda module, args: seen.setdefault("norm_in", args[0])),
    ]
    ids, hidden, pooled, micro = _inputs(muse)
    try:
        with model.route(["a"] * 3):
            muse.transformer(ids, hidden, pooled, micro)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        plain = head.conv1(seen["conv_in"]).permute(0, 2, 3, 1)  # what the layer norm gets without the adapter
        torch.testing.assert_close(seen["norm_in"], plain + adapter.extra_delta(plain, "mlm_layer.conv1"))
    assert not torch.allclose(seen["norm_in"], plain, atol=1e-4)

    # Only the adapter's own weights train; a site that is not a module, or has no channel count, is refused.
    assert all(p.requires_grad for p in model.adapter_parameters("a"))
    assert not any(p.requires_grad for p in muse.transformer.parameters())
    with pytest.raises(StylecraftError, match="'up_block.nothing' is not a module"):
        model.add_adapter("b", model.new_config("styledrop", extra_sites=["up_block.nothing"]))
    with pytest.raises(StylecraftError, match="is a UVitBlock; name a Linear, Conv2d or attention"):
        model.add_adapter("c", model.new_config("styledrop", extra_sites=["up_block"]))
    with pytest.raises(StylecraftError, match="extra_sites applies to the styledrop adapter only"):
        model.new_config("lora", extra_sites=EXTRA_SITES)


def test_two_named_adapters_share_one_base(muse):
    model = AdaptedTransformer(muse)
    model.add_adapter("style", model.new_config("styledrop", rank=4, shared=True))
    model.add_adapter("content", model.new_config("lora", rank=4))
    _perturb(model, "style", 1)
    _perturb(model, "content", 2)
    ids, hidden, pooled, micro = _inputs(muse)
    style = model(["style"] * 3, ids, hidden, pooled, micro)
    content = model(["content"] * 3, ids, hidden, pooled, micro)
    both = model(["style", "content", None], ids, hidden, pooled, micro)
    torch.testing.assert_close(both[0], style[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], content[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(style[0], content[0], atol=1e-4)
    with pytest.raises(StylecraftError, match="no adapter named 'other'"):
        model(["other"] * 3, ids, hidden, pooled, micro)


@pytest.mark.parametrize("adapter_type", ["styledrop", "styledrop+extra", "lora"])
def test_save_load_round_trip(muse, tmp_path, adapter_type):
    model = AdaptedTransformer(muse)
    model.add_adapter("a", _config(model, adapter_type, rank=2, prompts=["a cat in oil painting style"]))
    _perturb(model, "a")
    model.save_adapter("a", tmp_path / "ad")
    assert {p.name for p in (tmp_path / "ad").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["base_fingerprint"] == muse.fingerprint and config["adapter_type"] == adapter_type.split("+")[0]

    other = AdaptedTransformer(load_muse(muse.name))
    name = other.load_adapter(tmp_path / "ad")
    assert name == "ad"
    ids, hidden, pooled, micro = _inputs(muse)
    torch.testing.assert_close(
        other(["ad"] * 3, ids, hidden, pooled, micro), model(["a"] * 3, ids, hidden, pooled, micro)
    )


def test_adapter_for_another_base_is_refused(muse, tmp_path):
    model = AdaptedTransformer(muse)
    model.add_adapter("a", model.new_config("styledrop", rank=2))
    model.save_adapter("a", tmp_path / "ad")
    other = build_random_muse("tiny", seed=0)
    other.transformer.register_to_config(intermediate_size=65)  # a different architecture fingerprint
    with pytest.raises(StylecraftError, match="was trained on base model"):
        AdaptedTransformer(other).load_adapter(tmp_path / "ad")


def test_adapter_of_another_token_grid_is_refused_by_name(muse, tmp_path):
    # e.g. an adapter of the 8 x 8-token Muse-mini loaded on a 16 x 16 one: its layers could even fit
    model = AdaptedTransformer(muse)
    model.add_adapter("a", model.new_config("styledrop", rank=2))
    model.save_adapter("a", tmp_path / "ad")
    grid = muse.transformer.config.sample_size
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["token_grid"] == grid
    other = build_random_muse("tiny", seed=0)
    other.transformer.register_to_config(sample_size=2 * grid)
    with pytest.raises(StylecraftError, match=f"trained on a {grid}x{grid} token grid .* draws {2 * grid}x"):
        AdaptedTransformer(other).load_adapter(tmp_path / "ad")


def test_adapter_on_other_weights_of_its_architecture_warns(muse, tmp_path, clip_tokenizer, caplog):
    # e.g. an adapter of an earlier shapes-model release: same architecture, other token embeddings and codebook
    model = AdaptedTransformer(muse)
    model.add_adapter("a", model.new_config("styledrop", rank=2))
    model.save_adapter("a", tmp_path / "ad")
    assert json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["base_weights"] == muse.weights_fingerprint
    with caplog.at_level("WARNING", logger="stylecraft"):
        AdaptedTransformer(load_muse(muse.name)).load_adapter(tmp_path / "ad")
    assert not caplog.records  # the same weights, loaded again: no warning
    retrained = build_random_muse("tiny", seed=1, tokenizer=clip_tokenizer)
    assert retrained.fingerprint == muse.fingerprint and retrained.weights_fingerprint != muse.weights_fingerprint
    with caplog.at_level("WARNING", logger="stylecraft"):
        AdaptedTransformer(retrained).load_adapter(tmp_path / "ad")  # loads: a warning, not an error
    assert "trained on other weights of this architecture" in caplog.text and "Train it again" in caplog.text


def test_broken_adapter_folders(muse, tmp_path):
    model = AdaptedTransformer(muse)
    model.add_adapter("a", model.new_config("styledrop", rank=2))
    folder = tmp_path / "ad"
    model.save_adapter("a", folder)
    weights = (folder / "adapter_model.safetensors").read_bytes()

    (folder / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(StylecraftError, match="corrupt"):
        read_adapter(folder)
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(StylecraftError, match="has no adapter_model.safetensors"):
        read_adapter(folder)
    (folder / "adapter_model.safetensors").write_bytes(weights)
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(StylecraftError, match="adapter_config.json is corrupt"):
        read_adapter(folder)
    with pytest.raises(StylecraftError, match="adapter folder not found"):
        read_adapter(tmp_path / "nope")
