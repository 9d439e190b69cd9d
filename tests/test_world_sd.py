"""shapes-sd's training stages (world/train_sd.py, world/train_sd_adapters.py) at tiny sizes: each stage trains a few
steps, and what it writes loads with diffusers' standard loaders and draws 64×64 images."""

import json

import pytest
import torch
from PIL import Image

from stylecraft.world import WEIGHTS, renderer
from stylecraft.world.pretrain import load_recipe

NO_ORACLES = WEIGHTS / "missing-oracles.safetensors"  # a fresh run's oracles don't exist: the shipped ones judge
TINY_VAE = {
    "block_out_channels": [8, 8, 8, 8],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "mid_block_add_attention": False,
}
TINY_UNET = {"block_out_channels": [16, 16, 32], "layers_per_block": 1, "attention_head_dim": 2, "norm_num_groups": 8}
# warmup above every run's step count: the lr of step i is then the same whatever the run's length (resume test)
TINY = {"batch_size": 4, "warmup": 40, "threads": 1, "log_every": 1, "eval_images": 4}
UNET_EXTRA = {"empty_prompt_prob": 0.1, "eval": {"images": 2, "steps": 2, "guidance": 3.0}}
NO_EVAL = {"empty_prompt_prob": 0.1, "eval": {"images": 0}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(name: str, **overrides):
    return load_recipe(name, overrides={**TINY, **overrides})


def train_unet(out, vae_run, steps: int, resume: bool = False, extra: dict = NO_EVAL, **overrides):
    from stylecraft.world.train_sd import train_sd_unet

    recipe = tiny("sd-unet", steps=steps, model=TINY_UNET, extra=extra, **overrides)
    out.mkdir(parents=True, exist_ok=True)
    train_sd_unet(recipe, out, resume, vae_run, None, NO_ORACLES)
    return recipe


@pytest.fixture(scope="module")
def shapes_sd(tmp_path_factory):
    """A tiny shapes-sd: the sd-vae stage, then the sd-unet stage on it (3 steps each)."""
    from stylecraft.world.train_sd import train_sd_vae

    runs = tmp_path_factory.mktemp("sd-runs")
    (runs / "vae").mkdir()
    train_sd_vae(tiny("sd-vae", steps=3, model=TINY_VAE), runs / "vae", False, NO_ORACLES)
    train_unet(runs / "unet", runs / "vae", steps=3, extra=UNET_EXTRA)
    return runs


def test_vae_stage_writes_a_vae_of_unit_variance_latents_its_contact_sheet_and_evaluation(shapes_sd):
    from diffusers import AutoencoderKL

    from stylecraft.world.pretrain import to_tensor

    vae = AutoencoderKL.from_pretrained(shapes_sd / "vae" / "vae", local_files_only=True)
    images, _ = renderer.render_batch(64, 5)
    latents = vae.encode(to_tensor(images) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
    assert latents.shape == (64, 4, 8, 8)  # four levels: 64 px -> 8×8 latents
    assert 0.7 < latents.std().item() < 1.4  # the scaling factor was measured on other renders of the same world
    sheet = Image.open(shapes_sd / "vae" / "reconstructions.png")
    assert sheet.size[0] > sheet.size[1] > 4 * 64  # 14 styles wide, two pairs of rows
    metrics = json.loads((shapes_sd / "vae" / "training.json").read_text())["metrics"]
    assert set(metrics) == {"seen", "held_out"} and 0 <= metrics["seen"]["reconstruction"]["shape"] <= 1


def test_sd_unet_stage_writes_a_folder_stable_diffusion_pipeline_loads_unchanged(shapes_sd):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPModel

    folder = shapes_sd / "unet" / "shapes-sd"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.safety_checker is None
    # cross-attention in every down block, the mid block and every up block, at three resolutions
    unet = pipe.unet
    assert [b.__class__.__name__ for b in unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3
    assert [b.__class__.__name__ for b in unet.up_blocks] == ["CrossAttnUpBlock2D"] * 3
    assert unet.mid_block.__class__.__name__ == "UNetMidBlock2DCrossAttn"
    # the text encoder is the shipped mini CLIP's text tower, weight for weight
    clip = CLIPModel.from_pretrained(WEIGHTS / "clip", local_files_only=True)
    for name, value in clip.text_model.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[name], value), name
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a large red circle in flat color style", num_inference_steps=2, generator=torch.manual_seed(0))
    assert image.images[0].size == (64, 64)
    metrics = json.loads((shapes_sd / "unet" / "training.json").read_text())["metrics"]
    assert metrics["seen_seconds_per_16_images"] > 0 and set(metrics["seen"]) >= {"shape", "colour", "style"}


def test_sd_unet_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(shapes_sd, tmp_path):
    from diffusers import UNet2DConditionModel

    train_unet(tmp_path / "straight", shapes_sd / "vae", steps=4)
    train_unet(tmp_path / "resumed", shapes_sd / "vae", steps=2)
    train_unet(tmp_path / "resumed", shapes_sd / "vae", steps=4, resume=True)
    history = json.loads((tmp_path / "resumed" / "training.json").read_text())["history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [0, 1, 2, 3]  # steps 2-3 ran after resuming
    straight, resumed = (
        UNet2DConditionModel.from_pretrained(tmp_path / run / "shapes-sd" / "unet", local_files_only=True)
        for run in ("straight", "resumed")
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_sd_unet_loss_on_a_fixed_batch_goes_down_in_30_steps(shapes_sd, tmp_path):
    from diffusers import UNet2DConditionModel

    from stylecraft.world.train_sd import LatentDiffusion, build_unet, load_shapes_sd, step_generator

    recipe = train_unet(tmp_path / "run", shapes_sd / "vae", steps=30, batch_size=8, lr=2e-3, warmup=5)
    parts = LatentDiffusion.from_pipeline(load_shapes_sd(tmp_path / "run" / "shapes-sd"))
    images, scenes = renderer.render_batch(32, 123, renderer.SEEN_STYLES)
    noisy, timesteps, target = parts.noised(images, step_generator(99, 0))
    text = parts.encode_text(scenes.captions())
    torch.manual_seed(recipe.seed)  # the stage's initial weights
    before = build_unet(TINY_UNET, 8, 4, 96)
    after = UNet2DConditionModel.from_pretrained(tmp_path / "run" / "shapes-sd" / "unet", local_files_only=True)
    with torch.no_grad():
        losses = [
            torch.nn.functional.mse_loss(u(noisy, timesteps, text).sample, target).item() for u in (before, after)
        ]
    assert losses[1] < 0.85 * losses[0], losses  # 1.14 -> 0.86 when written


def test_ip_adapter_stage_saves_h94s_layout_that_load_ip_adapter_and_instantstyle_load(shapes_sd, style_png):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from stylecraft.instantstyle import ip_adapter_processors, load_instantstyle
    from stylecraft.world.train_sd_adapters import IP_ADAPTER_WEIGHTS, train_ip_adapter

    sd = shapes_sd / "unet" / "shapes-sd"
    out = shapes_sd / "ip"
    out.mkdir()
    extra = {"drop_prob": 0.05, "eval": {"images": 2, "steps": 2}}
    train_ip_adapter(tiny("ip-adapter", steps=3, lr=1e-2, extra=extra), out, False, sd, None, NO_ORACLES)
    metrics = json.loads((out / "training.json").read_text())["metrics"]
    assert set(metrics["mean"]) == {"style_accuracy", "content_accuracy", "leakage"}
    assert set(metrics) == {"sampler", "mean", *renderer.HELD_OUT_STYLES}
    weights = load_file(out / "ip-adapter" / IP_ADAPTER_WEIGHTS)
    assert {k for k in weights if k.startswith("image_proj.")} == {
        f"image_proj.{k}" for k in ("proj.weight", "proj.bias", "norm.weight", "norm.bias")
    }
    # one odd-numbered key pair per cross-attention layer, in attn_processors order
    pipe = StableDiffusionPipeline.from_pretrained(sd, local_files_only=True)
    cross = [name for name in pipe.unet.attn_processors if name.endswith("attn2.processor")]
    assert {k for k in weights if k.startswith("ip_adapter.")} == {
        f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight" for i in range(len(cross)) for kv in "kv"
    }
    pipe.load_ip_adapter(str(out), subfolder="ip-adapter", weight_name=IP_ADAPTER_WEIGHTS)
    processors = list(ip_adapter_processors(pipe.unet).values())
    assert torch.equal(processors[-1].to_v_ip[0].weight, weights[f"ip_adapter.{2 * len(cross) - 1}.to_v_ip.weight"])
    # trained: the adapter's keys left the copies of to_k they started as
    first = pipe.unet.get_submodule(cross[0].removesuffix(".processor"))
    assert not torch.equal(processors[0].to_k_ip[0].weight, first.to_k.weight)
    assert pipe.image_encoder.config.projection_dim == 96 and list(pipe.feature_extractor.image_mean) == [0.5] * 3
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a large red circle", ip_adapter_image=Image.open(style_png), num_inference_steps=2).images[0]
    assert image.size == (64, 64)

    # stylecraft instantstyle's loader takes it as an SD 1.5-layout model, content subtraction in the mini CLIP
    style = load_instantstyle(
        sd, ip_adapter=out, weight_name=f"ip-adapter/{IP_ADAPTER_WEIGHTS}", content_text_encoder=WEIGHTS / "clip"
    )
    output = style("a large red circle", style_png, blocks="style", content_prompt="a blue star", steps=2)
    assert output.images[0].size == (64, 64) and output.settings["block_keys"] == ["up_blocks.1"]

    # a later stage continues this adapter (extra.init); lr 0 keeps it, so the saved file comes back unchanged
    again = shapes_sd / "ip-again"
    again.mkdir()
    extra = {**extra, "init": str(out), "style_caption_prob": 0.5}
    train_ip_adapter(tiny("ip-adapter", steps=2, lr=0.0, extra=extra), again, False, sd, None, NO_ORACLES)
    continued = load_file(again / "ip-adapter" / IP_ADAPTER_WEIGHTS)
    assert continued.keys() == weights.keys() and all(torch.equal(continued[k], weights[k]) for k in weights)


def test_ip_adapter_captions_without_style_name_only_the_content():
    from stylecraft.world.train_sd_adapters import without_style

    captions = ["a small red circle in the top left in pastel style", "a large blue star in hatched fill style"]
    assert without_style(captions, torch.tensor([False, True])) == ["a small red circle in the top left", captions[1]]


def test_ip_adapter_init_must_name_a_run_with_an_adapter(tmp_path):
    from stylecraft.errors import StylecraftError
    from stylecraft.world.train_sd_adapters import earlier_ip_adapter

    with pytest.raises(StylecraftError, match="extra.init"):
        earlier_ip_adapter(str(tmp_path))


def test_controlnet_stage_saves_a_controlnet_the_controlnet_pipeline_loads(shapes_sd):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    from stylecraft.errors import StylecraftError
    from stylecraft.instantstyle import canny_edges
    from stylecraft.world.train_sd_adapters import train_controlnet

    sd = shapes_sd / "unet" / "shapes-sd"
    out = shapes_sd / "controlnet"
    out.mkdir()
    extra = {"empty_prompt_prob": 0.5, "eval": {"images": 2, "steps": 2}}
    recipe = tiny("controlnet", steps=3, model={"conditioning_embedding_out_channels": [4, 4, 8, 8]}, extra=extra)
    train_controlnet(recipe, out, False, sd, NO_ORACLES)
    metrics = json.loads((out / "training.json").read_text())["metrics"]
    assert set(metrics["edges_only"]) == {"shape", "size", "position"} and "style" in metrics["edges_and_caption"]
    controlnet = ControlNetModel.from_pretrained(out / "controlnet", local_files_only=True)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(sd, controlnet=controlnet, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    edges = canny_edges(Image.fromarray(renderer.render_batch(1, 3)[0][0]))
    image = pipe("a large red circle", image=edges, num_inference_steps=2).images[0]
    assert image.size == (64, 64)

    # a later stage continues it (extra.init); lr 0 keeps its weights; a folder without one is refused
    again = shapes_sd / "controlnet-again"
    again.mkdir()
    train_controlnet(
        tiny("controlnet", steps=2, lr=0.0, extra={**extra, "init": str(out)}), again, False, sd, NO_ORACLES
    )
    continued = ControlNetModel.from_pretrained(again / "controlnet", local_files_only=True).state_dict()
    assert all(torch.equal(value, continued[key]) for key, value in controlnet.state_dict().items())
    with pytest.raises(StylecraftError, match="extra.init: no ControlNet"):
        train_controlnet(tiny("controlnet", steps=2, extra={**extra, "init": str(sd)}), again, False, sd, NO_ORACLES)


def test_stages_refuse_missing_inputs_and_bad_sizes_with_one_line(tmp_path):
    from stylecraft.errors import StylecraftError
    from stylecraft.world.pretrain import main
    from stylecraft.world.train_sd import build_unet

    with pytest.raises(SystemExit, match=r"^error: no VAE in .*sd-vae --out"):
        main(["sd-unet", "--out", str(tmp_path / "unet"), "--vae", str(tmp_path / "nothing"), "--steps", "1"])
    with pytest.raises(SystemExit, match=r"^error: .* is not a shapes-sd folder"):
        main(["controlnet", "--out", str(tmp_path / "cn"), "--sd", str(tmp_path / "nothing"), "--steps", "1"])
    with pytest.raises(StylecraftError, match="at least 3 resolution levels"):
        build_unet({"block_out_channels": [16, 32]}, 8, 4, 96)


def test_ship_sd_assembles_a_folder_instantstyle_loads_with_no_other_argument(shapes_sd, style_png, tmp_path):
    """After the stages above: ship-sd gathers shapes-sd, its IP-Adapter, ControlNet and content text tower in one
    folder whose model_index.json declares them; load_instantstyle(folder) alone finds every part."""
    import shutil

    from stylecraft.instantstyle import load_instantstyle
    from stylecraft.world.ship import ship_sd

    runs = tmp_path / "runs"
    runs.mkdir()
    for name, stage in (("sd-unet", "unet"), ("ip-adapter", "ip"), ("controlnet", "controlnet")):
        (runs / name).symlink_to(shapes_sd / stage)
    (runs / "clip").mkdir()
    (runs / "clip" / "clip").symlink_to(WEIGHTS / "clip")
    shutil.copy(WEIGHTS / "clip" / "training.json", runs / "clip" / "training.json")
    presets = {"style": ["up_blocks.2"], "style+layout": ["up_blocks.2", "down_blocks.1"]}
    folder = ship_sd(runs, presets, tmp_path / "weights")
    assert {p.name for p in folder.iterdir()} >= {"unet", "vae", "ip-adapter", "controlnet", "content_text_encoder"}
    assert sorted(p.name for p in (folder / "training").iterdir()) == [
        "clip.json",
        "controlnet.json",
        "ip-adapter.json",
        "sd-unet.json",
    ]
    style = load_instantstyle(folder)
    assert style.content_text_encoder is not None and hasattr(style.pipe, "controlnet") is False
    output = style("a large blue star", style_png, blocks="style", content_prompt="a large red circle", steps=2)
    assert output.settings["block_keys"] == ["up_blocks.2"] and output.images[0].size == (64, 64)
    precise = style("a large blue star", style_png, content_prompt="a large red circle", precise=True, steps=2)
    assert precise.settings["layout_keys"] == ["down_blocks.1"]
    with_edges = load_instantstyle(folder, controlnet="default")  # the declared ControlNet
    drawn = with_edges("a large blue star", style_png, content_image=style_png, steps=2)
    assert drawn.control_image is not None and drawn.images[0].size == (64, 64)
    # nothing is half-written: a second ship replaces the folder whole
    assert (
        ship_sd(runs, None, tmp_path / "weights") == folder
        and not (tmp_path / "weights" / ".shapes-sd.shipping").exists()
    )
