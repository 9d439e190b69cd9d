"""InstantStyle on tiny random SD 1.5 / SDXL pipelines: block presets, parity with diffusers, subtraction, CLI."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from stylecraft.errors import StylecraftError
from stylecraft.instantstyle import (
    InstantStyle,
    canny_edges,
    ip_adapter_processors,
    load_instantstyle,
    subtract_content,
)
from stylecraft.random_sd import UNET_CONFIGS, build_tiny_pipeline, build_unet, save_tiny_ip_adapter


@pytest.fixture(scope="module")
def saved(tmp_path_factory, clip_tokenizer):
    """Tiny pipelines and IP-Adapters on disk, in the hub layouts: {name: (model_dir, ip_adapter_dir)}."""
    from diffusers import ControlNetModel

    root = tmp_path_factory.mktemp("instantstyle")
    folders, unets = {}, {}
    for architecture in ("tiny-sdxl", "tiny-sd15"):
        pipe = build_tiny_pipeline(architecture, clip_tokenizer)
        pipe.save_pretrained(root / architecture)
        save_tiny_ip_adapter(root / f"{architecture}-ip", pipe.unet)
        folders[architecture], unets[architecture] = (root / architecture, root / f"{architecture}-ip"), pipe.unet
    save_tiny_ip_adapter(
        root / "tiny-sdxl-ip", unets["tiny-sdxl"], plus=True, weight_name="ip-adapter-plus.safetensors"
    )
    # One conditioning downsample: the tiny VAE scales by 2, not 8. A fresh ControlNet's zero convs make it a no-op,
    # so they get small random weights.
    controlnet = ControlNetModel.from_unet(unets["tiny-sdxl"], conditioning_embedding_out_channels=(8, 16))
    torch.manual_seed(0)
    for parameter in controlnet.parameters():
        if not parameter.any():
            parameter.data.normal_(0, 0.1)
    controlnet.save_pretrained(root / "cn")
    folders["controlnet"] = root / "cn"
    return folders


def _load(saved, architecture="tiny-sdxl", **kwargs) -> InstantStyle:
    model, ip_adapter = saved[architecture]
    return load_instantstyle(model, ip_adapter=ip_adapter, weight_name="ip-adapter.safetensors", **kwargs)


@pytest.fixture(scope="module")
def sdxl(saved):
    return _load(saved)


@pytest.fixture(scope="module")
def sd15(saved):
    return _load(saved, "tiny-sd15")


@pytest.fixture(scope="module")
def style_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "style.png"
    Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype(np.uint8)).save(path)
    return path


def _arrays(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


def _image_proj_inputs(style: InstantStyle, run):
    """``run()``'s result and what the IP-Adapter's projection received: [2·images, D] (negative rows first)."""
    seen = []
    hook = style.image_projection.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        output = run()
    finally:
        hook.remove()
    return seen[0], output


@pytest.mark.parametrize(
    "architecture, blocks, prefixes",
    [
        ("tiny-sdxl", "style", ["up_blocks.0.attentions.1."]),
        ("tiny-sdxl", "style+layout", ["up_blocks.0.attentions.1.", "down_blocks.2.attentions.1."]),
        ("tiny-sdxl", "all", ["down_blocks.", "mid_block.", "up_blocks."]),
        ("tiny-sdxl", "up_blocks.1.attentions.2, mid_block", ["up_blocks.1.attentions.2.", "mid_block."]),
        ("tiny-sd15", "style", ["up_blocks.1."]),
        ("tiny-sd15", "style+layout", ["down_blocks.2.", "mid_block.", "up_blocks.1."]),
    ],
)
def test_presets_reach_exactly_the_intended_processors(request, style_png, architecture, blocks, prefixes):
    style = request.getfixturevalue("sdxl" if architecture == "tiny-sdxl" else "sd15")
    processors = ip_adapter_processors(style.pipe.unet)
    expected = {name for name in processors if name.startswith(tuple(prefixes))}
    assert expected and (blocks == "all") == (expected == set(processors))
    fired = set()
    hooks = [
        processor.to_k_ip[0].register_forward_hook(lambda *_, name=name: fired.add(name))
        for name, processor in processors.items()
    ]
    try:
        output = style("a red fox", style_png, blocks=blocks, steps=1)
    finally:
        for hook in hooks:
            hook.remove()
    assert fired == expected
    assert output.settings["active_processors"] == len(expected)


def test_all_and_style_equal_diffusers(sdxl, style_png):
    image = Image.open(style_png).convert("RGB")
    settings = dict(num_inference_steps=2, guidance_scale=5.0, num_images_per_prompt=2)
    for blocks, diffusers_scale in (("all", 1.0), ("style", {"up": {"block_0": [0.0, 1.0, 0.0]}})):
        ours = sdxl("a red fox", image, blocks=blocks, steps=2, guidance=5.0, num_images=2, seed=3).images
        sdxl.pipe.set_ip_adapter_scale(diffusers_scale)
        generator = torch.Generator("cpu").manual_seed(3)
        reference = sdxl.pipe("a red fox", ip_adapter_image=image, generator=generator, **settings).images
        np.testing.assert_array_equal(_arrays(ours), _arrays(reference), err_msg=blocks)
    # The style block changes the picture, so "style" and "all" are not trivially equal.
    assert not np.array_equal(_arrays(ours), _arrays(sdxl("a red fox", image, blocks="all", steps=2, seed=3).images))


def test_subtraction_is_image_minus_s_times_content_text(sdxl, style_png):
    pipe = sdxl.pipe
    pixels = pipe.feature_extractor(Image.open(style_png).convert("RGB"), return_tensors="pt").pixel_values
    tokens = pipe.tokenizer_2("a dog", padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image_embeds = pipe.image_encoder(pixels).image_embeds  # [1, D], bigG's space in real SDXL
        text_embeds = pipe.text_encoder_2(tokens.input_ids).text_embeds  # [1, D], same space
    for subtract, expected_strength in ((None, 0.5), (0.3, 0.3)):
        received, _ = _image_proj_inputs(
            sdxl, lambda s=subtract: sdxl("a cat", style_png, content_prompt="a dog", subtract=s, steps=1)
        )
        torch.testing.assert_close(received[0], torch.zeros_like(received[0]), rtol=0, atol=0)  # negative
        torch.testing.assert_close(received[1], (image_embeds - expected_strength * text_embeds)[0])
    # A precomputed embedding takes the same path (the official repo drops the subtraction there).
    precomputed = sdxl("a cat", style_png, steps=1).image_embeds
    from_file, _ = _image_proj_inputs(
        sdxl, lambda: sdxl("a cat", style_embeds=precomputed, content_prompt="a dog", steps=1)
    )
    torch.testing.assert_close(from_file[1], (image_embeds - 0.5 * text_embeds)[0])
    torch.testing.assert_close(
        subtract_content(torch.ones(1, 3), torch.arange(3.0)[None], 2.0), torch.tensor([[1.0, -1, -3]])
    )


def test_sd15_subtraction_uses_the_content_text_encoder(saved, sd15, style_png, tmp_path, clip_tokenizer):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection

    with pytest.raises(StylecraftError, match="--content-text-encoder"):
        sd15("a cat", style_png, content_prompt="a dog", steps=1)
    ids = {name: getattr(clip_tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    # A whole CLIP checkpoint, as laion/CLIP-ViT-H-14-laion2B-s32B-b79K ships, with the image encoder's 16 dims ...
    text_config = {**tower, **ids, "vocab_size": 1000}
    vision_config = {**tower, "image_size": 32, "patch_size": 8}
    clip = CLIPModel(CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16))
    clip.save_pretrained(tmp_path / "vit-h-text")
    # ... and a lone text tower whose projection does not match.
    CLIPTextModelWithProjection(CLIPTextConfig(**text_config, projection_dim=24)).save_pretrained(tmp_path / "wrong")
    for folder in ("vit-h-text", "wrong"):
        clip_tokenizer.save_pretrained(tmp_path / folder)
    style = _load(saved, "tiny-sd15", content_text_encoder=tmp_path / "vit-h-text")
    received, output = _image_proj_inputs(style, lambda: style("a cat", style_png, content_prompt="a dog", steps=1))
    tokens = clip_tokenizer("a dog", padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    pixels = style.pipe.feature_extractor(Image.open(style_png).convert("RGB"), return_tensors="pt").pixel_values
    with torch.no_grad():
        content = clip.get_text_features(input_ids=tokens.input_ids).pooler_output
        expected = style.pipe.image_encoder(pixels).image_embeds - 0.8 * content  # default strength with ViT-H
    torch.testing.assert_close(received[1], expected[0])
    assert output.settings["subtract"] == 0.8
    with pytest.raises(StylecraftError, match="16 dims but the content text embedding has 24"):
        _load(saved, "tiny-sd15", content_text_encoder=tmp_path / "wrong")("a", style_png, content_prompt="b")


def test_clear_errors(saved, sdxl, style_png, tmp_path):
    with pytest.raises(StylecraftError, match=r"unknown block key\(s\) up_blocks\.9 .*up_blocks\.0\.attentions\.1"):
        sdxl("a cat", style_png, blocks="up_blocks.0.attentions.1,up_blocks.9")
    with pytest.raises(StylecraftError, match="unknown block key"):
        sdxl("a cat", style_png, blocks="up_blocks.0.attentions.7")  # diffusers would silently turn it all off
    fake = tmp_path / "style.png"
    fake.write_text("not an image")
    with pytest.raises(StylecraftError, match="not a readable image"):
        sdxl("a cat", fake)
    with pytest.raises(StylecraftError, match="PIL image or an image file path, not ndarray"):
        sdxl("a cat", np.zeros((32, 32, 3)))
    with pytest.raises(StylecraftError, match=r"style embedding has shape \(1, 8\) but this IP-Adapter expects 16"):
        sdxl("a cat", style_embeds=torch.zeros(1, 8))
    with pytest.raises(StylecraftError, match="exactly one"):
        sdxl("a cat")
    with pytest.raises(StylecraftError, match="--subtract needs --content-prompt"):
        sdxl("a cat", style_png, subtract=0.5)
    with pytest.raises(StylecraftError, match="needs a ControlNet"):
        sdxl("a cat", style_png, content_image=style_png)
    with pytest.raises(StylecraftError, match="could not load IP-Adapter"):
        load_instantstyle(saved["tiny-sdxl"][0], ip_adapter=tmp_path, weight_name="missing.safetensors")


def test_plus_adapter_generates_but_refuses_subtraction(saved, style_png):
    model, ip_adapter = saved["tiny-sdxl"]
    style = load_instantstyle(model, ip_adapter=ip_adapter, weight_name="ip-adapter-plus.safetensors")
    assert style("a cat", style_png, steps=1).images[0].size == (32, 32)
    with pytest.raises(StylecraftError, match="patch tokens"):
        style("a cat", style_png, content_prompt="a dog", steps=1)


def test_canny_edges_follow_boundaries():
    array = np.zeros((32, 32), dtype=np.uint8)
    array[8:24, 8:24] = 255
    edges = np.asarray(canny_edges(Image.fromarray(array).convert("RGB")))
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    on = edges[..., 0] > 0
    assert on[7:9, 10:22].any(axis=0).all() and on[10:22, 23:25].any(axis=1).all()  # every side of the square
    assert not on[12:20, 12:20].any() and not on[:5].any()  # nothing inside or in the flat background
    assert not np.asarray(canny_edges(Image.new("RGB", (32, 32), "gray"))).any()


def test_content_image_goes_through_the_controlnet(saved, style_png):
    style = _load(saved, controlnet=saved["controlnet"])
    assert type(style.pipe).__name__ == "StableDiffusionXLControlNetPipeline"
    output = style("a cat", style_png, content_image=style_png, steps=1)
    assert output.control_image.size == (32, 32) and output.settings["controlnet_scale"] == 0.6
    stronger = style("a cat", style_png, content_image=style_png, controlnet_scale=2.0, steps=1)
    assert not np.array_equal(_arrays(output.images), _arrays(stronger.images))


def test_cli_writes_images_grid_run_json_and_reuses_embeddings(saved, style_png, tmp_path, capsys):
    from stylecraft.cli import main

    model, ip_adapter = saved["tiny-sdxl"]
    common = ["instantstyle", "--model", str(model), "--ip-adapter", str(ip_adapter)]
    common += ["--ip-adapter-weight", "ip-adapter.safetensors", "--prompt", "a red fox", "--steps", "1"]
    common += ["--num-images", "2", "--content-prompt", "a dog"]
    assert main([*common, "--style-image", str(style_png), "--out", str(tmp_path / "a")]) == 0
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    # plus the marker that makes the folder stylecraft's own (what --overwrite may replace)
    assert files == [".stylecraft", "000.png", "001.png", "grid.png", "inputs/style_embeds.safetensors", "run.json"]
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["blocks"] == "style" and run["block_keys"] == ["up_blocks.0.attentions.1"] and run["subtract"] == 0.5
    assert Image.open(tmp_path / "a" / "000.png").text["prompt"] == "a red fox"

    embeds = tmp_path / "a" / "inputs" / "style_embeds.safetensors"
    assert main([*common, "--style-embeds", str(embeds), "--out", str(tmp_path / "b")]) == 0
    for name in ("000.png", "001.png"):
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "a" / name)), np.asarray(Image.open(tmp_path / "b" / name))
        )

    capsys.readouterr()
    assert (
        main([*common, "--style-image", str(style_png), "--blocks", "up_blocks.5", "--out", str(tmp_path / "c")]) == 2
    )
    assert capsys.readouterr().err.startswith("error: unknown block key(s) up_blocks.5")
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
@pytest.mark.parametrize("architecture, parameters", [("sd15", 859_520_964), ("sdxl", 2_567_463_684)])
def test_real_architectures_take_one_step_with_style_blocks(architecture, parameters):
    """The published UNet configs with random weights load an IP-Adapter and run one CFG step (latents 32×32)."""
    from diffusers.models.embeddings import MultiIPAdapterImageProjection

    from stylecraft.instantstyle import resolve_blocks, set_ip_adapter_blocks
    from stylecraft.random_sd import ip_adapter_state_dict

    torch.set_num_threads(os.cpu_count() or 1)
    unet = build_unet(architecture)
    assert sum(p.numel() for p in unet.parameters()) == parameters
    embed_dim = 1280 if architecture == "sdxl" else 1024  # bigG / ViT-H image encoders
    unet._load_ip_adapter_weights([ip_adapter_state_dict(unet, embed_dim)])
    assert isinstance(unet.encoder_hid_proj, MultiIPAdapterImageProjection)
    active = set_ip_adapter_blocks(unet, resolve_blocks(unet, "style"))
    assert active and all(
        name.startswith("up_blocks." + ("0.attentions.1" if architecture == "sdxl" else "1")) for name in active
    )
    config = UNET_CONFIGS[architecture]
    batch, text = 2, torch.randn(2, 77, config["cross_attention_dim"])
    added = {"image_embeds": [torch.cat([torch.zeros(1, 1, embed_dim), torch.randn(1, 1, embed_dim)])]}
    if architecture == "sdxl":
        added.update(
            text_embeds=torch.randn(batch, 1280), time_ids=torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2)
        )
    with torch.no_grad():
        out = unet(torch.randn(batch, 4, 32, 32), 500, encoder_hidden_states=text, added_cond_kwargs=added).sample
    assert out.shape == (batch, 4, 32, 32) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------------------- options (issue 29)


@pytest.fixture(scope="module")
def other_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("other") / "other.png"
    Image.fromarray((np.random.RandomState(1).rand(32, 32, 3) * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "architecture, layout",
    [("tiny-sdxl", ["down_blocks.2.attentions.1"]), ("tiny-sd15", ["down_blocks.2", "mid_block"])],
)
def test_precise_gives_the_layout_blocks_swapped_image_tokens(request, style_png, architecture, layout):
    style = request.getfixturevalue("sdxl" if architecture == "tiny-sdxl" else "sd15")
    processors = ip_adapter_processors(style.pipe.unet)
    plain = style("a red fox", style_png, steps=2, num_images=2, seed=1)
    seen = {}  # processor name -> image tokens its to_k_ip got at the first step: [2·images, ...]
    hooks = [
        processor.to_k_ip[0].register_forward_pre_hook(lambda _, args, name=name: seen.setdefault(name, args[0]))
        for name, processor in processors.items()
    ]
    try:
        precise = style("a red fox", style_png, steps=2, num_images=2, seed=1, precise=True)
    finally:
        for hook in hooks:
            hook.remove()

    def under(keys: list[str]) -> set[str]:
        return {name for name in processors if name.startswith(tuple(f"{key}." for key in keys))}

    assert set(seen) == under(layout) | under(style.block_presets["style"]) and under(layout)
    as_given = seen[min(under(style.block_presets["style"]))]  # [unconditional; conditional], diffusers' order
    swapped = torch.cat(as_given.chunk(2)[::-1])
    assert not torch.equal(as_given, swapped)
    for name in under(layout):
        torch.testing.assert_close(seen[name], swapped, rtol=0, atol=0)
    assert precise.settings["precise"] and precise.settings["layout_keys"] == layout
    assert not plain.settings["precise"] and plain.settings["layout_keys"] is None
    assert not np.array_equal(_arrays(plain.images), _arrays(precise.images))
    # the UNet's own processors are back: a plain call after a precise one equals the plain call before it
    assert ip_adapter_processors(style.pipe.unet) == processors
    again = style("a red fox", style_png, steps=2, num_images=2, seed=1)
    np.testing.assert_array_equal(_arrays(plain.images), _arrays(again.images))


def test_precise_needs_guidance_and_layout_blocks_of_its_own(sdxl, style_png):
    with pytest.raises(StylecraftError, match="--precise .* needs classifier-free guidance; use --guidance above 1"):
        sdxl("a cat", style_png, precise=True, guidance=1.0, steps=1)
    with pytest.raises(StylecraftError, match="--precise takes the layout block.* down_blocks.2.attentions.1 as neg"):
        sdxl("a cat", style_png, precise=True, blocks="style+layout", steps=1)
    # the processors stay diffusers' own after a refused call
    assert all(type(p).__name__ == "IPAdapterAttnProcessor2_0" for p in ip_adapter_processors(sdxl.pipe.unet).values())


def test_several_style_images_feed_their_weighted_mean(sdxl, style_png, other_png):
    pipe = sdxl.pipe
    with torch.no_grad():
        embeds = [
            pipe.image_encoder(
                pipe.feature_extractor(Image.open(p).convert("RGB"), return_tensors="pt").pixel_values
            ).image_embeds[0]  # [D]
            for p in (style_png, other_png)
        ]
    received = {}
    for name, images, weights in (
        ("one", style_png, None),
        ("twice", [style_png, style_png], None),
        ("first only", [style_png, other_png], [1, 0]),
        ("3:1", [style_png, other_png], [3, 1]),
    ):
        received[name], output = _image_proj_inputs(
            sdxl, lambda i=images, w=weights: sdxl("a cat", i, style_weights=w, steps=1)
        )
        torch.testing.assert_close(received[name][0], torch.zeros_like(received[name][0]), rtol=0, atol=0)
        torch.testing.assert_close(output.image_embeds[0], received[name][1], rtol=0, atol=0)  # what is saved
    torch.testing.assert_close(received["one"][1], embeds[0], rtol=0, atol=0)
    torch.testing.assert_close(received["twice"], received["one"], rtol=0, atol=0)
    torch.testing.assert_close(received["first only"], received["one"], rtol=0, atol=0)
    torch.testing.assert_close(received["3:1"][1], 0.75 * embeds[0] + 0.25 * embeds[1])
    assert output.settings["style_weights"] == [3, 1]
    for weights, message in (
        ([1, -1], "non-negative and not all zero"),
        ([0, 0], "non-negative and not all zero"),
        ([1], r"got 2 style image\(s\) and 1 weight\(s\)"),
    ):
        with pytest.raises(StylecraftError, match=message):
            sdxl("a cat", [style_png, other_png], style_weights=weights, steps=1)
    with pytest.raises(StylecraftError, match="--style-weights weighs style images"):
        sdxl("a cat", style_embeds=embeds[0], style_weights=[1.0], steps=1)


def test_plus_adapter_averages_patch_tokens(saved, style_png, other_png):
    model, ip_adapter = saved["tiny-sdxl"]
    style = load_instantstyle(model, ip_adapter=ip_adapter, weight_name="ip-adapter-plus.safetensors")
    tokens = [style.encode_style(path)[0] for path in (style_png, other_png)]  # [1, T, W] each
    received, _ = _image_proj_inputs(
        style, lambda: style("a cat", [style_png, other_png], style_weights=[1, 3], steps=1)
    )
    torch.testing.assert_close(received[1], (0.25 * tokens[0] + 0.75 * tokens[1])[0])


def test_clear_errors_for_components_that_do_not_fit(saved, sdxl, style_png, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    for key, kind in (("down_blocks.0", "DownBlock2D"), ("up_blocks.2", "UpBlock2D")):
        with pytest.raises(
            StylecraftError,
            match=rf"block {key} \({kind}\) has no cross-attention, .*blocks that have: .*up_blocks\.0\.attentions\.1",
        ):
            sdxl("a cat", style_png, blocks=key)
    # An image encoder of another width: 24-dim embeddings (basic adapter) or 24-wide patch tokens (Plus).
    tower = dict(intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    for name, hidden, projection, weights in (
        ("pooled", 16, 24, "ip-adapter.safetensors"),
        ("tokens", 24, 16, "ip-adapter-plus.safetensors"),
    ):
        config = CLIPVisionConfig(hidden_size=hidden, projection_dim=projection, **tower)
        CLIPVisionModelWithProjection(config).save_pretrained(tmp_path / name)
        with pytest.raises(
            StylecraftError,
            match=r"image encoder gives 24-dim image embeddings but the IP-Adapter's image projection takes 16; "
            r"pass the adapter's own image encoder \(--image-encoder\)",
        ):
            load_instantstyle(
                saved["tiny-sdxl"][0],
                ip_adapter=saved["tiny-sdxl"][1],
                weight_name=weights,
                image_encoder=tmp_path / name,
            )
    # SDXL's ControlNet on the SD 1.5 model
    with pytest.raises(
        StylecraftError,
        match=r"ControlNet .*cn was made for another base model: its cross_attention_dim is 32, the UNet's is 16; "
        r"pass a ControlNet trained on this model \(--controlnet\)",
    ):
        _load(saved, "tiny-sd15", controlnet=saved["controlnet"])
    index = tmp_path / "bad" / "model_index.json"
    index.parent.mkdir()
    index.write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "_stylecraft": {"block_presets": "x"}}))
    with pytest.raises(StylecraftError, match=r"\"block_presets\" maps preset names to lists of block keys"):
        load_instantstyle(index.parent)


@pytest.fixture(scope="module")
def declared(saved, clip_tokenizer, tmp_path_factory):
    """The tiny SD 1.5 folder with its IP-Adapter, ControlNet and content text tower inside, declared in
    model_index.json's "_stylecraft" entry (as shapes-sd ships)."""
    import shutil

    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path_factory.mktemp("declared") / "tiny-declared"
    shutil.copytree(saved["tiny-sd15"][0], folder)
    shutil.copytree(saved["tiny-sd15"][1], folder / "ip-adapter")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)).save_pretrained(folder / "controlnet")
    ids = {name: getattr(clip_tokenizer, name) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    text = CLIPTextConfig(
        vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        projection_dim=16, **ids,
    )  # fmt: skip
    CLIPTextModelWithProjection(text).save_pretrained(folder / "content-text")
    clip_tokenizer.save_pretrained(folder / "content-text")
    index = json.loads((folder / "model_index.json").read_text())
    index["_stylecraft"] = {
        "architecture": "tiny-declared",
        "block_presets": {"style": ["up_blocks.2"], "style+layout": ["down_blocks.1", "up_blocks.2"]},
        "ip_adapter": ".",
        "ip_adapter_weight": "ip-adapter/ip-adapter.safetensors",
        "controlnet": "controlnet",
        "content_text_encoder": "content-text",
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def test_a_model_folder_declares_its_presets_adapter_controlnet_and_text_tower(declared, saved, style_png, monkeypatch):
    from diffusers import DiffusionPipeline

    import stylecraft.instantstyle as instantstyle
    from stylecraft.world import WEIGHTS

    # diffusers ignores index keys that start with "_": the folder stays a plain StableDiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(declared, local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline" and "_stylecraft" not in pipe.components

    style = load_instantstyle(declared, controlnet="default")
    assert style.sources["ip_adapter"] == str(declared)
    assert style.sources["ip_adapter_weight"] == "ip-adapter/ip-adapter.safetensors"
    assert style.sources["controlnet"] == str(declared / "controlnet")
    assert style.sources["content_text_encoder"] == str(declared / "content-text")
    assert style.architecture == "tiny-declared"
    output = style(
        "a cat", style_png, content_image=style_png, content_prompt="a dog", precise=True, steps=1, guidance=3.0
    )
    settings = output.settings
    assert settings["architecture"] == "tiny-declared" and settings["block_keys"] == ["up_blocks.2"]
    assert settings["layout_keys"] == ["down_blocks.1"] and settings["subtract"] == 0.8  # the declared text tower

    # explicit arguments win; --model omitted means the shipped shapes-sd folder
    model, ip_adapter = saved["tiny-sd15"]
    explicit = load_instantstyle(declared, ip_adapter=ip_adapter, weight_name="ip-adapter.safetensors")
    assert explicit.sources["ip_adapter"] == str(ip_adapter) and explicit("a cat", style_png, blocks="style", steps=1)
    assert instantstyle.DEFAULT_MODEL == WEIGHTS / "shapes-sd"
    monkeypatch.setattr(instantstyle, "DEFAULT_MODEL", declared)
    assert load_instantstyle().sources["model"] == str(declared)
    monkeypatch.setattr(instantstyle, "DEFAULT_MODEL", declared.parent / "shapes-sd")
    with pytest.raises(
        StylecraftError, match=r"built-in shapes-sd model is not installed \(.*shapes-sd is missing\); pass --model"
    ):
        load_instantstyle()


def test_cli_several_style_images_weights_and_precise(saved, sdxl, style_png, other_png, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    import stylecraft.instantstyle as instantstyle
    from stylecraft.cli import main

    model, ip_adapter = saved["tiny-sdxl"]
    common = ["instantstyle", "--ip-adapter", str(ip_adapter), "--ip-adapter-weight", "ip-adapter.safetensors"]
    common += ["--prompt", "a red fox", "--steps", "1", "--num-images", "1"]
    images = ["--style-image", str(style_png), str(other_png)]
    out = tmp_path / "a"
    assert (
        main([*common, "--model", str(model), *images, "--style-weights", "1", "0", "--precise", "--out", str(out)])
        == 0
    )
    run = json.loads((out / "run.json").read_text())
    assert run["style_image"] == [str(style_png), str(other_png)] and run["style_weights"] == [1.0, 0.0]
    assert run["precise"] and run["layout_keys"] == ["down_blocks.2.attentions.1"]
    saved_embeds = load_file(out / "inputs" / "style_embeds.safetensors")["image_embeds"]
    torch.testing.assert_close(saved_embeds, sdxl.encode_style(style_png)[0])  # the weighted mean: the first image

    capsys.readouterr()
    assert main([*common, "--model", str(model), *images, "--style-weights", "1", "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err == (
        "error: got 2 style image(s) and 1 weight(s); give one weight per image (--style-weights W [W ...]) or none "
        "for equal weights\n"
    )
    monkeypatch.setattr(instantstyle, "DEFAULT_MODEL", tmp_path / "shapes-sd")
    assert main([*common, *images, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the built-in shapes-sd model is not installed") and err.count("\n") == 1
    assert not (tmp_path / "d").exists()
