"""Pretrain the shapes world's models on the CPU, each from a JSON recipe (``world/recipes.json``).

    python -m stylecraft.world.pretrain oracles --out runs/world/oracles
    python -m stylecraft.world.pretrain glyph   --out runs/world/glyph     # the two-adapter experiment's detector
    python -m stylecraft.world.pretrain vq      --out runs/world/vq
    python -m stylecraft.world.pretrain clip    --out runs/world/clip
    python -m stylecraft.world.pretrain muse    --out runs/world/muse --vq runs/world/vq --clip runs/world/clip
    python -m stylecraft.world.pretrain ship    --runs runs/world      # copy the results into world/weights/
    python -m stylecraft.world.pretrain evaluate --images 512          # the shipped VQ and Muse-mini, judged again

Every run streams fresh renders (no data set on disk), uses AdamW with linear warmup + cosine decay, checkpoints
to ``OUT/checkpoint.pt`` (``--resume`` continues from it, the data stream included, since batch ``i`` is seeded
by ``(seed, i)``), and writes ``OUT/training.json``: the resolved recipe, the metrics and the wall time.
Evaluation uses fixed seeds (``EVAL_SEED``) disjoint from training seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StylecraftError
from ..io import _atomic_write, write_json
from . import RECIPES as TRAIN_RECIPES
from . import SAMPLING, WEIGHTS, renderer
from .oracles import ATTRIBUTES, Oracles, load_oracles, oracle_accuracy

RECIPES = Path(__file__).parent / "recipes.json"
LINEAGE = "training.earlier-stages.json"  # beside a Muse's training.json: the records of the stages it continued
EVAL_SEED = 10_000_019  # evaluation renders; training streams use the recipe's seed (small integers)
PRECISIONS = ("fp32", "bf16")


@dataclass
class Recipe:
    """Settings shared by every model; each model's section of recipes.json fills these and ``model``."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate (after warmup)
    warmup: int = 100  # linear warmup steps, then cosine decay to 0
    weight_decay: float = 0.01
    seed: int = 0  # training stream and init seed
    threads: int = 2  # torch CPU threads (this machine has 2 shared cores)
    log_every: int = 50
    checkpoint_every: int = 500
    max_minutes: float = 0.0  # wall-clock budget (0: none); the lr schedule follows max(step, time) progress
    # "bf16": forward and loss under CPU bfloat16 autocast, conv weights channels-last (weights and optimizer stay
    # float32); about 2.5x faster VQ steps on a CPU with AMX (benchmarks/bench_world_precision.py). "fp32": plain.
    precision: str = "fp32"
    eval_images: int = 1024  # fresh renders per evaluation
    model: dict = field(default_factory=dict)  # architecture keyword arguments
    extra: dict = field(default_factory=dict)  # model-specific settings (see each trainer)


def load_recipe(name: str, path: str | Path | None = None, overrides: dict | None = None) -> Recipe:
    """The ``name`` section of the recipe file, with ``overrides`` (e.g. from the command line) applied."""
    recipes = json.loads(Path(path or RECIPES).read_text())
    if name not in recipes:
        raise ValueError(f"recipe file {path or RECIPES} has no {name!r} section; it has {sorted(recipes)}")
    values = {**recipes[name], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    known = {f.name for f in fields(Recipe)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown recipe fields {sorted(unknown)} for {name!r}; known fields: {sorted(known)}")
    recipe = Recipe(**values)
    if recipe.precision not in PRECISIONS:
        raise StylecraftError(
            f"recipe {name!r}: precision must be one of {', '.join(PRECISIONS)}, got {recipe.precision!r}"
        )
    return recipe


def learning_rate(step: int, recipe: Recipe, minutes: float = 0.0) -> float:
    """Linear warmup to ``recipe.lr`` then cosine decay to zero at ``recipe.steps`` or at ``recipe.max_minutes``,
    whichever comes first (on a shared CPU the time budget is the binding one)."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    if recipe.max_minutes:
        progress = max(progress, minutes / recipe.max_minutes)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float [n, 3, H, W] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def train_loop(
    recipe: Recipe,
    out: Path,
    modules: dict[str, torch.nn.Module],
    params,
    step_fn,
    resume: bool,
    state: dict | None = None,
) -> tuple[float, list[dict]]:
    """The loop every model shares: lr schedule -> ``step_fn(step)`` (returns the loss and logs) -> backward ->
    clip -> step, with periodic logs and checkpoints. Returns (wall seconds of this and earlier runs, log)."""
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))
    start, wall, history = 0, 0.0, []
    checkpoint = out / "checkpoint.pt"
    if resume and checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)  # tensors, numbers, lists and dicts only: no unpickling
        for name, module in modules.items():
            module.load_state_dict(saved["modules"][name])
        optimizer.load_state_dict(saved["optimizer"])
        start, wall, history = saved["step"], saved["wall"], saved["history"]
        if state is not None:
            state.update(saved.get("state", {}))
        print(f"resumed from step {start}", flush=True)
    began = time.time()

    def save(step: int) -> None:
        torch.save(
            {
                "modules": {k: m.state_dict() for k, m in modules.items()},
                "optimizer": optimizer.state_dict(),
                "step": step,
                "wall": wall + time.time() - began,
                "history": history,
                "state": state or {},
            },
            checkpoint,
        )

    bf16 = recipe.precision == "bf16"
    for module in modules.values():
        module.train()
        if bf16:  # oneDNN's bfloat16 convolutions are fastest on channels-last weights (a no-op for other layers)
            module.to(memory_format=torch.channels_last)
    step = start
    for step in range(start, recipe.steps):
        minutes = (wall + time.time() - began) / 60
        if recipe.max_minutes and minutes >= recipe.max_minutes:
            print(f"time budget of {recipe.max_minutes} min reached at step {step}", flush=True)
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe, minutes)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, logs = step_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % recipe.log_every == 0 or step == recipe.steps - 1:
            entry = {
                "step": step,
                "loss": round(loss.item(), 4),
                "lr": group["lr"],
                "seconds": round(wall + time.time() - began, 1),
                **logs,
            }
            history.append(entry)
            print(json.dumps(entry), flush=True)
        if (step + 1) % recipe.checkpoint_every == 0:
            save(step + 1)
    else:
        step = recipe.steps
    save(step)
    history.append({"step": step, "finished": True, "seconds": round(wall + time.time() - began, 1)})
    for module in modules.values():
        module.eval()
        module.to(memory_format=torch.contiguous_format)  # saved weights are plain contiguous tensors
    return wall + time.time() - began, history


def evaluation_oracles(path: Path) -> Oracles:
    """Oracles from ``path`` when that file exists (a fresh run), else the shipped ones."""
    return load_oracles(path if path.is_file() else None)


def finish(out: Path, name: str, recipe: Recipe, wall: float, history: list[dict], metrics: dict) -> None:
    report = {
        "model": name,
        "recipe": asdict(recipe),
        "metrics": metrics,
        "train_wall_seconds": round(wall, 1),
        "history": history,
    }
    write_json(out / "training.json", report)
    print(json.dumps({"metrics": metrics, "train_wall_seconds": round(wall, 1)}, indent=2), flush=True)


# ---- oracles ----------------------------------------------------------------------------------------------------
def train_oracles(recipe: Recipe, out: Path, resume: bool) -> None:
    torch.manual_seed(recipe.seed)
    model = Oracles(**recipe.model)
    data = renderer.stream(recipe.batch_size, recipe.seed)

    def step_fn(step):
        images, scenes = next(data)
        x = _soften(to_tensor(images), recipe.extra.get("blur_prob", 0.25))
        logits = model(x)
        labels = scenes.labels()
        losses = {k: F.cross_entropy(logits[k], torch.from_numpy(labels[k])) for k in ATTRIBUTES}
        return sum(losses.values()), {k: round(v.item(), 3) for k, v in losses.items()}

    wall, history = train_loop(recipe, out, {"oracles": model}, list(model.parameters()), step_fn, resume)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "oracles.safetensors"))
    oracles = load_oracles(out / "oracles.safetensors")
    finish(out, "oracles", recipe, wall, history, evaluate_oracles(oracles, recipe.eval_images))


def _soften(x: torch.Tensor, probability: float) -> torch.Tensor:
    """Blur a random ``probability`` share of images a little: oracles must also judge soft generated images."""
    blur = torch.tensor([1.0, 2.0, 1.0])
    blur = (blur[:, None] * blur[None, :] / 16).expand(3, 1, 3, 3)
    soft = torch.rand(len(x)) < probability
    x[soft] = F.conv2d(F.pad(x[soft], (1, 1, 1, 1), mode="replicate"), blur, groups=3).to(x.dtype)  # bf16 autocast
    return x


# ---- glyph oracle -------------------------------------------------------------------------------------------------
def train_glyph_oracle(recipe: Recipe, out: Path, resume: bool) -> None:
    """A glyph-or-not detector: half of each batch glyphs; the other half the eight shapes, shapeless blobs
    (``renderer.render_blobs``) for a share ``extra.blob_fraction`` of it, and loose strokes
    (``renderer.render_strokes``) for a share ``extra.stroke_fraction``; all styles, colours and sizes."""
    from safetensors.torch import save_file

    from .oracles import GlyphOracle, load_glyph_oracle

    fractions = {key: recipe.extra.get(key, 0.0) for key in ("blob_fraction", "stroke_fraction")}
    for key, value in fractions.items():
        if not 0.0 <= value <= 1.0:
            raise StylecraftError(f"extra.{key} must be in [0, 1] (a share of the negatives), got {value}")
    if sum(fractions.values()) > 1.0:
        raise StylecraftError(
            f"extra.blob_fraction + extra.stroke_fraction must be at most 1 (shares of the negatives), got "
            f"{sum(fractions.values())}"
        )
    torch.manual_seed(recipe.seed)
    model = GlyphOracle(**recipe.model)
    half = recipe.batch_size // 2

    def step_fn(step):
        glyphs, _ = renderer.render_glyphs(half, seed=[recipe.seed, step, 1])
        blobs, strokes = (round(half * fractions[key]) for key in ("blob_fraction", "stroke_fraction"))
        shapes, _ = renderer.render_batch(half - blobs - strokes, seed=[recipe.seed, step, 0])
        negatives = [shapes]
        if blobs:
            negatives.append(renderer.render_blobs(blobs, seed=[recipe.seed, step, 2]))
        if strokes:
            negatives.append(renderer.render_strokes(strokes, seed=[recipe.seed, step, 3]))
        x = _soften(to_tensor(np.concatenate([glyphs, *negatives])), recipe.extra.get("blur_prob", 0.25))
        target = torch.cat([torch.ones(half), torch.zeros(half)])
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        return loss, {}

    wall, history = train_loop(recipe, out, {"glyph": model}, list(model.parameters()), step_fn, resume)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "glyph_oracle.safetensors"))
    detector = load_glyph_oracle(out / "glyph_oracle.safetensors")
    finish(out, "glyph", recipe, wall, history, evaluate_glyph_oracle(detector, recipe.eval_images))


def evaluate_glyph_oracle(detector, per_style: int) -> dict:
    """Per style: share of fresh glyph renders called glyph, and of fresh shape, blob and stroke renders called
    not-glyph."""
    result = {}
    for k, style in enumerate(renderer.STYLES):
        glyphs, _ = renderer.render_glyphs(per_style, EVAL_SEED + k, styles=(style,))
        shapes, _ = renderer.render_batch(per_style, EVAL_SEED + 100 + k, styles=(style,))
        blobs = renderer.render_blobs(per_style, EVAL_SEED + 200 + k, styles=(style,))
        strokes = renderer.render_strokes(per_style, EVAL_SEED + 300 + k, styles=(style,))
        result[style] = {
            "glyph_recall": round(float(detector.predict(glyphs).mean()), 4),
            "shape_rejection": round(float((~detector.predict(shapes)).mean()), 4),
            "blob_rejection": round(float((~detector.predict(blobs)).mean()), 4),
            "stroke_rejection": round(float((~detector.predict(strokes)).mean()), 4),
        }
    keys = ("glyph_recall", "shape_rejection", "blob_rejection", "stroke_rejection")
    result["min"] = {key: min(result[s][key] for s in renderer.STYLES) for key in keys}
    return result


def evaluate_oracles(oracles: Oracles, per_style: int) -> dict:
    """Accuracy per attribute on ``per_style`` fresh renders of every style (fixed evaluation seed)."""
    result = {}
    for k, style in enumerate(renderer.STYLES):
        images, scenes = renderer.render_batch(per_style, EVAL_SEED + k, styles=(style,))
        result[style] = {a: round(v, 4) for a, v in oracle_accuracy(oracles, images, scenes.labels()).items()}
    result["min"] = {a: min(result[s][a] for s in renderer.STYLES) for a in ATTRIBUTES}
    return result


# ---- VQ tokenizer -----------------------------------------------------------------------------------------------
def train_vq(recipe: Recipe, out: Path, resume: bool, oracles: Path) -> None:
    from .vq import WorldVQModel

    part = recipe.extra.get("train", "all")  # checked before anything loads; what each part means: below
    if part not in ("all", "decoder", "encoder"):
        raise StylecraftError(f"extra.train must be all, decoder or encoder, got {part!r}")
    torch.manual_seed(recipe.seed)
    # A later stage starts from an earlier stage's weights (``extra.init``: a vqvae folder; "shapes": the shipped VQ).
    init = recipe.extra.get("init")
    if init == "shapes":
        from . import shapes_model_dir

        init = shapes_model_dir() / "vqvae"
    if init and not (Path(init) / "config.json").is_file():
        raise StylecraftError(
            f"this stage starts from the VQ in {init}, which has no config.json: train that first "
            "(python -m stylecraft.world.pretrain vq --out runs/world/vq) or set the recipe's extra.init"
        )
    if init:
        vq, info = WorldVQModel.from_pretrained(init, local_files_only=True, output_loading_info=True)
        if info["missing_keys"]:
            raise StylecraftError(
                f"the VQ in {init} lacks {len(info['missing_keys'])} weights of the architecture its config names "
                f"(e.g. {info['missing_keys'][0]}): it comes from an older WorldVQModel; point extra.init at a VQ "
                "trained with this version"
            )
    else:
        vq = WorldVQModel(**recipe.model)
    # ``extra.edge_weight``: pixels within ``extra.edge_width`` px of the shape's edge weigh 1 + edge_weight in the
    # reconstruction loss. The codes' few bits then go to the outline, which decides the shape, before texture.
    # ``extra.fill_weight``: the pixels inside the shape weigh fill_weight more (added to any edge weight), meant for
    # the colour of thin ink such as pen hatching's lines (it did not lift colour; pooled_weight below did).
    edge_weight, edge_width = recipe.extra.get("edge_weight", 0.0), recipe.extra.get("edge_width", 1.5)
    fill_weight = recipe.extra.get("fill_weight", 0.0)
    # ``extra.pooled_weight``: adds the error of 4×4-pixel means, the colour a region averages to, which thin lines'
    # hue decides (pen hatching's blue drifting to purple) and the per-pixel loss weighs little beside edges.
    pooled_weight = recipe.extra.get("pooled_weight", 0.0)
    if edge_weight < 0 or edge_width <= 0 or fill_weight < 0 or pooled_weight < 0:
        raise StylecraftError(
            f"extra.edge_weight, extra.fill_weight and extra.pooled_weight must be >= 0 and extra.edge_width > 0 "
            f"(px), got {edge_weight}, {fill_weight}, {pooled_weight} and {edge_width}; a weight of 0 turns that "
            "term off"
        )
    data = renderer.stream_with_edges(recipe.batch_size, recipe.seed, edges=edge_weight > 0 or fill_weight > 0)
    restart_every = recipe.extra.get("restart_dead_codes_every", 100)
    # ``extra.train: "decoder"`` trains the decoder alone on frozen codes: every image keeps its tokens, so a Muse
    # trained on this VQ's tokens stays valid and only draws its tokens better. ``"encoder"`` trains the encoder alone
    # against the frozen codebook and decoder: every code still draws what it drew, so a Muse trained on this VQ
    # samples exactly the same pictures, and only the choice of codes for a given image changes.
    decoder_only = part == "decoder"
    if part != "all":
        vq.requires_grad_(False)
        modules = (vq.post_quant_conv, vq.decoder) if decoder_only else (vq.encoder, vq.quant_conv)
        trained = [param for module in modules for param in module.parameters()]
        for param in trained:
            param.requires_grad_(True)
        restart_every = 0
    else:
        trained = list(vq.parameters())
    # VQ from scratch collapses onto a handful of codes here; the usual cure: train as a plain autoencoder first,
    # then start the codebook from k-means of the encoder's outputs, then train with quantization.
    autoencoder_steps = recipe.extra.get("autoencoder_steps", 0)
    usage = torch.zeros(vq.config.num_vq_embeddings)

    def reconstruction_loss(reconstruction, x, distance):
        error = (reconstruction - x).square() + 0.5 * (reconstruction - x).abs()
        pooled = pooled_weight * F.avg_pool2d(reconstruction - x, 4).square().mean() if pooled_weight else 0.0
        if distance is None:
            return error.mean() + pooled
        distance = torch.from_numpy(distance)[:, None]
        weight = 1.0 + edge_weight * (distance.abs() < edge_width).float() + fill_weight * (distance < 0).float()
        return (error * weight).sum() / (weight.sum() * x.shape[1]) + pooled

    def step_fn(step):
        images, _, distance = next(data)
        x = to_tensor(images)
        latents = vq.encode(x).latents.float()  # [n, c, 8, 8]; float32 also under a bf16 recipe
        if step < autoencoder_steps:
            reconstruction = vq.decoder(vq.post_quant_conv(latents)).float()
            return reconstruction_loss(reconstruction, x, distance), {"phase": "autoencoder"}
        with torch.autocast("cpu", enabled=False):  # nearest codes in float32: bfloat16 distances pick wrong codes
            if step == autoencoder_steps and autoencoder_steps:
                codebook = codebook_kmeans(vq, recipe.seed, vq.config.num_vq_embeddings)
                vq.quantize.embedding.weight.data.copy_(codebook)
            quantized, commit_loss, (_, _, indices) = vq.quantize(latents)
        reconstruction = vq.decoder(vq.post_quant_conv(quantized)).float()
        loss = reconstruction_loss(reconstruction, x, distance)
        if not decoder_only:
            loss = loss + commit_loss
        usage.add_(torch.bincount(indices.flatten(), minlength=len(usage)).float())
        if restart_every and (step + 1) % restart_every == 0 and step < 0.8 * recipe.steps:
            # Codes no encoder output chose since the last restart get re-seeded on random encoder outputs, so the
            # small codebook stays fully used (the usual remedy for dead codes in VQ training).
            dead = (usage == 0).nonzero().squeeze(1)
            if len(dead):
                flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
                vq.quantize.embedding.weight.data[dead] = flat[torch.randint(len(flat), (len(dead),))]
            usage.zero_()
        return loss, {"commit": round(commit_loss.item(), 4), "used_codes": int((usage > 0).sum())}

    wall, history = train_loop(recipe, out, {"vq": vq}, trained, step_fn, resume)
    vq.save_pretrained(out / "vqvae")
    vq = WorldVQModel.from_pretrained(out / "vqvae", local_files_only=True).eval()
    finish(out, "vq", recipe, wall, history, evaluate_vq(vq, evaluation_oracles(oracles), recipe.eval_images))


@torch.no_grad()
def codebook_kmeans(vq, seed: int, codes: int, images: int = 512, iterations: int = 20) -> torch.Tensor:
    """``codes`` k-means centres of the encoder's latent vectors on ``images`` fresh renders (seeded)."""
    rendered, _ = renderer.render_batch(images, seed + 7_777)
    latents = torch.cat([vq.encode(to_tensor(rendered[i : i + 128])).latents for i in range(0, images, 128)])
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    generator = torch.Generator().manual_seed(seed)
    centres = flat[torch.randperm(len(flat), generator=generator)[:codes]].clone()
    for _ in range(iterations):
        nearest = torch.cdist(flat, centres).argmin(1)
        counts = torch.bincount(nearest, minlength=codes).float()
        sums = torch.zeros_like(centres).index_add_(0, nearest, flat)
        empty = counts == 0
        centres[~empty] = sums[~empty] / counts[~empty, None]
        centres[empty] = flat[torch.randint(len(flat), (int(empty.sum()),), generator=generator)]
    return centres


@torch.no_grad()
def reconstruct(vq, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Encode to tokens and decode back: uint8 [n, 64, 64, 3] -> float [n, 3, 64, 64] in [0, 1]."""
    outputs = []
    for i in range(0, len(images), batch_size):
        latents = vq.encode(to_tensor(images[i : i + batch_size])).latents
        quantized, _, _ = vq.quantize(latents)
        outputs.append(vq.decoder(vq.post_quant_conv(quantized)).clamp(0, 1))
    return torch.cat(outputs)


def evaluate_vq(vq, oracles: Oracles, per_style: int) -> dict:
    """Oracle accuracy on fresh renders and on their reconstructions, per style and overall; pixel MSE."""
    result, mse = {}, []
    for k, style in enumerate(renderer.STYLES):
        images, scenes = renderer.render_batch(per_style, EVAL_SEED + k, styles=(style,))
        recon = reconstruct(vq, images)
        mse.append(F.mse_loss(recon, to_tensor(images)).item())
        result[style] = {
            "original": oracle_accuracy(oracles, images, scenes.labels()),
            "reconstruction": oracle_accuracy(oracles, recon, scenes.labels()),
        }
    for kind in ("original", "reconstruction"):
        result[f"mean_{kind}"] = {
            a: round(float(np.mean([result[s][kind][a] for s in renderer.STYLES])), 4) for a in ATTRIBUTES
        }
    result["pixel_mse"] = round(float(np.mean(mse)), 5)
    return result


# ---- mini CLIP ----------------------------------------------------------------------------------------------------
def build_tokenizer(folder: Path, max_length: int, resume: bool = False):
    """The world's CLIP tokenizer in ``folder``; a resumed run keeps the one it started with (rewriting it would
    renumber the tokens under the checkpoint's embeddings)."""
    from transformers import CLIPTokenizer

    from ..tokenizer import write_clip_tokenizer

    if not (resume and (folder / "vocab.json").is_file()):
        write_clip_tokenizer(folder, renderer.vocabulary(), model_max_length=max_length)
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def train_clip(recipe: Recipe, out: Path, resume: bool) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(recipe.seed)
    if recipe.extra.get("init"):
        train_clip_vision(recipe, out, resume)
        return
    max_length = recipe.extra.get("max_length", 32)
    tokenizer = build_tokenizer(out / "clip", max_length, resume)
    text = {
        **recipe.model["text"],
        "vocab_size": len(tokenizer),
        "max_position_embeddings": max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPConfig(
        text_config=text,
        vision_config={**recipe.model["vision"], "image_size": renderer.SIZE},
        projection_dim=recipe.model["projection_dim"],
    )
    clip = CLIPModel(config)
    data = renderer.stream(recipe.batch_size, recipe.seed)

    def step_fn(step):
        images, scenes = next(data)
        ids = tokenizer(
            scenes.captions(), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        outputs = clip(input_ids=ids.input_ids, pixel_values=to_tensor(images) * 2 - 1, return_loss=True)
        return outputs.loss, {"scale": round(clip.logit_scale.exp().item(), 2)}

    wall, history = train_loop(recipe, out, {"clip": clip}, list(clip.parameters()), step_fn, resume)
    clip.save_pretrained(out / "clip")
    # Images go in as [-1, 1] at 64×64: a processor that does exactly that, for users of CLIPProcessor.
    CLIPImageProcessor(
        size={"shortest_edge": renderer.SIZE}, crop_size=renderer.SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out / "clip")
    clip = CLIPModel.from_pretrained(out / "clip", local_files_only=True).eval()
    finish(out, "clip", recipe, wall, history, evaluate_clip(clip, tokenizer, recipe.eval_images))


def _clip_folder(init: str) -> Path:
    """The CLIP a stage continues: ``"shapes"`` (the shipped one) or a CLIP run folder (holding ``clip/``)."""
    folder = WEIGHTS / "clip" if init == "shapes" else Path(init) / "clip"
    if not (folder / "config.json").is_file():
        raise StylecraftError(
            f"this stage starts from the CLIP in {folder}, which has no config.json: train that first (python -m "
            "stylecraft.world.pretrain clip --out runs/world/clip) or set the recipe's extra.init"
        )
    return folder


def _variants(scenes: renderer.Scenes, name: str) -> list[list[str]]:
    """For each value of attribute ``name``: the scenes' captions with that attribute set to it (the true
    caption among them), as in the zero-shot evaluation."""
    captions = []
    for value in range(len(ATTRIBUTES[name])):
        changed = renderer.Scenes(**{k: v.copy() for k, v in scenes.labels().items()})
        getattr(changed, name)[:] = value
        if name == "size":  # large shapes are centred
            changed.position[:] = np.where(changed.size == 1, 0, scenes.position)
        captions.append(changed.captions())
    return captions


def train_clip_vision(recipe: Recipe, out: Path, resume: bool) -> None:
    """A later CLIP stage that trains the image tower only. The text tower and its projection stay frozen, so they
    remain Muse-mini's text encoder, bit for bit. The loss is CLIP's image-to-caption half, plus, for each attribute in
    ``extra.attribute_negatives``, a cross-entropy of each image over its caption and the captions that change only
    that attribute (the zero-shot test, on training renders): contrastive batches of random captions rarely differ
    in shape alone, so plain CLIP training learns shape last."""
    from transformers import CLIPModel, CLIPTokenizer

    source = _clip_folder(recipe.extra["init"])
    clip = CLIPModel.from_pretrained(source, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=True)
    if not (resume and (out / LINEAGE).is_file()):  # the records of the stages this one continues, oldest first
        record = source / "training.json" if (source / "training.json").is_file() else source.parent / "training.json"
        before = json.loads((source / LINEAGE).read_text()) if (source / LINEAGE).is_file() else []
        write_json(out / LINEAGE, [*before, json.loads(record.read_text())])
    clip.text_model.requires_grad_(False).eval()
    clip.text_projection.requires_grad_(False)
    trainable = [p for p in clip.parameters() if p.requires_grad]  # vision tower, its projection, logit scale
    attributes = recipe.extra.get("attribute_negatives", ["shape", "colour", "style", "size"])
    cache: dict[str, torch.Tensor] = {}

    def embed(captions: list[str]) -> torch.Tensor:  # the frozen text tower, once per distinct caption
        new = [c for c in dict.fromkeys(captions) if c not in cache]
        if new:
            cache.update(zip(new, clip_embed_text(clip, tokenizer, new), strict=True))
        return torch.stack([cache[c] for c in captions])

    data = renderer.stream(recipe.batch_size, recipe.seed)

    def step_fn(step):
        images, scenes = next(data)
        image = F.normalize(clip.get_image_features(pixel_values=to_tensor(images) * 2 - 1).pooler_output, dim=-1)
        scale, captions = clip.logit_scale.exp(), scenes.captions()
        logits = scale * image @ embed(captions).T
        # captions repeat within a batch: every image whose caption equals column j's is a right answer for it
        ids = torch.tensor([captions.index(c) for c in captions])
        same = (ids[:, None] == ids[None, :]).float()
        contrastive = -(F.log_softmax(logits, 1) * same / same.sum(1, keepdim=True)).sum(1).mean()
        logs, losses = {"scale": round(scale.item(), 2)}, [contrastive]
        for name in attributes:
            options = torch.stack([embed(c) for c in _variants(scenes, name)], dim=1)  # [n, values, d]
            loss = F.cross_entropy(
                scale * (options @ image[:, :, None])[..., 0], torch.from_numpy(getattr(scenes, name))
            )
            losses.append(loss)
            logs[name] = round(loss.item(), 3)
        return sum(losses), logs

    wall, history = train_loop(recipe, out, {"clip": clip}, trainable, step_fn, resume)
    clip.save_pretrained(out / "clip")
    for file in (
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    ):
        if (source / file).is_file():
            shutil.copy(source / file, out / "clip" / file)
    clip = CLIPModel.from_pretrained(out / "clip", local_files_only=True).eval()
    finish(out, "clip", recipe, wall, history, evaluate_clip(clip, tokenizer, recipe.eval_images))


@torch.no_grad()
def clip_embed_text(clip, tokenizer, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    return F.normalize(clip.get_text_features(input_ids=ids.input_ids).pooler_output, dim=-1)


@torch.no_grad()
def evaluate_clip(clip, tokenizer, n: int) -> dict:
    """Zero-shot accuracy per attribute (the true caption vs the captions that change only that attribute) and
    image->text retrieval top-1 among ``n`` captions of fresh renders of all styles."""
    images, scenes = renderer.render_batch(n, EVAL_SEED)
    image_features = F.normalize(clip.get_image_features(pixel_values=to_tensor(images) * 2 - 1).pooler_output, dim=-1)
    result = {}
    for name in ("shape", "colour", "style", "size"):
        candidates = [clip_embed_text(clip, tokenizer, captions) for captions in _variants(scenes, name)]
        similarity = torch.stack([(image_features * c).sum(-1) for c in candidates], dim=1)  # [n, classes]
        truth = torch.from_numpy(getattr(scenes, name))
        result[f"zero_shot_{name}"] = round((similarity.argmax(1) == truth).float().mean().item(), 4)
        if name == "style":
            per_style = {
                s: round((similarity.argmax(1) == truth)[truth == k].float().mean().item(), 3)
                for k, s in enumerate(renderer.STYLES)
            }
            result["zero_shot_style_per_style"] = per_style
    text_features = clip_embed_text(clip, tokenizer, scenes.captions())
    retrieved = (image_features @ text_features.T).argmax(1)
    captions = scenes.captions()
    result[f"retrieval_top1_of_{n}"] = round(
        float(np.mean([captions[j] == captions[i] for i, j in enumerate(retrieved.tolist())])), 4
    )
    return result


def clip_text_encoder(folder: str | Path):
    """The text tower of the CLIPModel in ``folder`` as a ``CLIPTextModelWithProjection`` (Muse's text encoder)."""
    from transformers import CLIPModel, CLIPTextConfig, CLIPTextModelWithProjection

    clip = CLIPModel.from_pretrained(folder, local_files_only=True)
    config = CLIPTextConfig(**{**clip.config.text_config.to_dict(), "projection_dim": clip.config.projection_dim})
    text_encoder = CLIPTextModelWithProjection(config)
    text_encoder.text_model.load_state_dict(clip.text_model.state_dict())
    text_encoder.text_projection.load_state_dict(clip.text_projection.state_dict())
    return text_encoder.eval()


# ---- Muse-mini ---------------------------------------------------------------------------------------------------
def muse_pool(pool_size: int, rng: np.random.Generator, small_fraction: float | None = None) -> renderer.Scenes:
    """The seen-style scenes a Muse-mini stage trains on. ``small_fraction`` (a later stage's ``extra``) sets the
    share of small shapes; None keeps sizes uniform, as the base run had them."""
    scenes = renderer.sample_scenes(pool_size, rng, renderer.SEEN_STYLES)
    if small_fraction is None:
        return scenes
    if not 0.0 <= float(small_fraction) <= 1.0:
        raise StylecraftError(f"extra.small_fraction must be between 0 and 1, got {small_fraction}")
    # Small shapes are what Muse-mini draws worst (a handful of outline tokens decide them), so a later stage can
    # see more of them. Positions are redrawn to match: large shapes are always centred.
    small = rng.random(pool_size) < float(small_fraction)
    scenes.size[:] = np.where(small, renderer.SIZES.index("small"), renderer.SIZES.index("large"))
    scenes.position[:] = np.where(small, rng.integers(len(renderer.POSITIONS), size=pool_size), 0)
    return scenes


def _retokenizer(folder: Path, model) -> torch.nn.Module:
    """The VQ in run folder ``folder`` (its vqvae/), checked to emit the codes and token grid ``model`` draws."""
    from .vq import WorldVQModel

    if not (folder / "vqvae" / "config.json").is_file():
        raise StylecraftError(
            f"extra.vq names {folder}, which has no vqvae/config.json: train that VQ first (python -m "
            f"stylecraft.world.pretrain vq --out {folder})"
        )
    vq = WorldVQModel.from_pretrained(folder / "vqvae", local_files_only=True).eval()
    ours, theirs = model.vqvae.config, vq.config
    for key in ("num_vq_embeddings", "block_out_channels"):
        if ours[key] != theirs[key]:  # both read from config.json, so lists and ints
            raise StylecraftError(
                f"extra.vq: the VQ in {folder} has {key} {theirs[key]}, the Muse being continued draws tokens of a VQ "
                f"with {ours[key]}; continue on a VQ fine-tuned from that one (its recipe's extra.init)"
            )
    return vq


def train_muse(recipe: Recipe, out: Path, resume: bool, vq_dir: Path, clip_dir: Path, oracles: Path) -> None:
    from diffusers import AmusedScheduler
    from transformers import CLIPTokenizer

    from ..muse import MuseModel, check_eos, mask_tokens, masked_token_loss
    from .transformer import WorldUVit2DModel
    from .vq import WorldVQModel

    torch.manual_seed(recipe.seed)
    init = recipe.extra.get("init")
    if init:
        # A later stage continues a trained Muse-mini (a Muse folder, or "shapes": the shipped one), with its own
        # VQ, text encoder and tokenizer, so its tokens and prompts stay those the weights were trained on.
        from ..muse import load_muse

        if init != "shapes" and not (Path(init) / "transformer").is_dir():
            raise StylecraftError(
                f"this stage starts from the Muse in {init}, which has no transformer/: train that first (python -m "
                "stylecraft.world.pretrain muse --out runs/world/muse) or set the recipe's extra.init"
            )
        model = load_muse(init)
        if recipe.extra.get("vq"):
            # ``extra.vq``: continue on another VQ's tokens (a VQ fine-tuned from the init's), so the transformer
            # relearns the codes that moved instead of starting over.
            model.vqvae = _retokenizer(Path(recipe.extra["vq"]), model)
        transformer, vq, text_encoder = model.transformer, model.vqvae, model.text_encoder
        if init == "shapes" and not (resume and (out / LINEAGE).is_file()):
            # "shapes" names whatever is shipped now, and a later ship replaces it: keep its lineage with this run
            # (written when the run starts; a resumed run keeps what it wrote then)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / LINEAGE, _shipped_lineage())
        transformer.requires_grad_(True).train()
    else:
        if recipe.extra.get("vq"):
            raise StylecraftError(
                "extra.vq retokenizes a stage that continues a Muse (extra.init); a run from scratch takes its VQ "
                "from --vq"
            )
        vq = WorldVQModel.from_pretrained(vq_dir / "vqvae", local_files_only=True).eval()
        text_encoder = clip_text_encoder(clip_dir / "clip")
        tokenizer = CLIPTokenizer.from_pretrained(clip_dir / "clip", local_files_only=True)
        check_eos(text_encoder, tokenizer, str(clip_dir / "clip"))
        codebook = vq.config.num_vq_embeddings
        text = text_encoder.config
        transformer = WorldUVit2DModel(
            **recipe.model,
            vocab_size=codebook + 1,
            codebook_size=codebook,
            encoder_hidden_size=text.hidden_size,
            cond_embed_dim=text.projection_dim,
            sample_size=renderer.SIZE // 2 ** (len(vq.config.block_out_channels) - 1),
        )
        scheduler = AmusedScheduler(mask_token_id=codebook)
        model = MuseModel(transformer, vq, text_encoder, tokenizer, scheduler, name="shapes")
    for module in (vq, text_encoder):
        module.requires_grad_(False)

    # Token cache: VQ-encoding is the costly part, so a pool of seen-style scenes is tokenized once (in chunks as
    # training reaches them) and revisited; captions are re-encoded per batch by the (tiny) frozen text encoder.
    pool_size = recipe.extra.get("pool_size", 50_000)
    rng = np.random.default_rng(recipe.seed)
    pool_scenes = muse_pool(pool_size, rng, recipe.extra.get("small_fraction"))
    pool_captions = pool_scenes.captions()
    side = transformer.config.sample_size
    pool_tokens = torch.full((pool_size, side, side), -1)
    # Tokens on the shape's outline decide which shape is drawn, yet a small shape has a handful of them among 64;
    # ``outline_weight`` > 1 weighs their loss up (1: Muse's plain masked-token mean).
    outline_weight = float(recipe.extra.get("outline_weight", 1.0))
    pool_outline = torch.zeros((pool_size, side, side), dtype=torch.bool)
    chunk = 1024

    def tokens_for(idx: np.ndarray) -> torch.Tensor:
        for start in np.unique(idx // chunk) * chunk:
            if pool_tokens[start, 0, 0] < 0:
                part = renderer.Scenes(**{k: v[start : start + chunk] for k, v in pool_scenes.labels().items()})
                pool_tokens[start : start + chunk] = model.encode_images(to_tensor(renderer.render(part, start)))
                if outline_weight != 1.0:
                    outline = renderer.outline_tokens(part, start, patch=renderer.SIZE // side)
                    pool_outline[start : start + chunk] = torch.from_numpy(outline)
        return pool_tokens[idx]

    drop = recipe.extra.get("empty_prompt_prob", 0.1)  # empty prompts so classifier-free guidance works
    micro = model.micro_conds(recipe.batch_size, renderer.SIZE, renderer.SIZE)

    def step_fn(step):
        g = np.random.default_rng([recipe.seed, step])
        # Early steps draw from the first chunks only, so the cache fills gradually instead of all at once.
        reach = min(pool_size, chunk * (1 + step // recipe.extra.get("steps_per_chunk", 40)))
        idx = g.integers(reach, size=recipe.batch_size)
        tokens = tokens_for(idx)
        prompts = ["" if g.random() < drop else pool_captions[i] for i in idx]
        pooled, hidden = model.encode_prompts(prompts)
        generator = torch.Generator().manual_seed(int(g.integers(2**31)))
        masked, mask = mask_tokens(tokens, model.mask_token_id, generator)
        logits = transformer(masked, micro_conds=micro, pooled_text_emb=pooled, encoder_hidden_states=hidden)
        weights = 1.0 + (outline_weight - 1.0) * pool_outline[idx].float() if outline_weight != 1.0 else None
        return masked_token_loss(logits, tokens, mask, weights), {}

    wall, history = train_loop(
        recipe, out, {"transformer": transformer}, list(transformer.parameters()), step_fn, resume
    )
    # The folder says how it is sampled and trained (model_index.json), so it loads like the shipped one.
    model.sampling_defaults, model.recipes = dict(SAMPLING), dict(TRAIN_RECIPES)
    model.save_pretrained(out / "muse")
    finish(
        out,
        "muse",
        recipe,
        wall,
        history,
        evaluate_muse(out / "muse", evaluation_oracles(oracles), recipe.extra.get("eval", {})),
    )


def evaluate_muse(folder: Path, oracles: Oracles, settings: dict) -> dict:
    """Oracle accuracy of CFG samples on fresh prompts of seen styles (and, for reference, held-out styles)."""

    from ..muse import load_muse

    pipe = load_muse(str(folder)).reference_pipeline()
    n, steps, guidance = settings.get("images", 128), settings.get("steps", 12), settings.get("guidance", 5.0)
    result = {"sampler": {"steps": steps, "guidance_scale": guidance, "images": n}}
    for group, styles in (("seen", renderer.SEEN_STYLES), ("held_out", renderer.HELD_OUT_STYLES)):
        scenes = renderer.sample_scenes(n, np.random.default_rng(EVAL_SEED), styles)
        prompts = scenes.captions()
        images = []
        for i in range(0, n, 32):
            output = pipe(
                prompts[i : i + 32],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(EVAL_SEED + i),
                output_type="pt",
            )
            images.append(output.images)
        result[group] = {
            k: round(v, 4) for k, v in oracle_accuracy(oracles, torch.cat(images), scenes.labels()).items()
        }
    return result


def evaluate_models(model: Path, oracles: Oracles, images: int, guidance: float = 2.0) -> dict:
    """The model card's evaluations of a Muse-mini folder (aMUSEd layout) again, judged by ``oracles``: its VQ's
    reconstructions of ``images`` fresh renders per style, and ``images`` prompts per style group for Muse-mini (the
    fixed evaluation seeds, as in training.json). For judging a model with other oracles than it trained with."""
    from ..muse import load_muse

    vq = load_muse(str(model)).vqvae.eval()  # refuses a folder without the aMUSEd layout, naming what is missing
    with torch.no_grad():
        vq_result = evaluate_vq(vq, oracles, images)
    return {
        "model": str(model),
        "vq": {key: vq_result[key] for key in ("mean_original", "mean_reconstruction", "pixel_mse")}
        | {"per_style": {style: vq_result[style] for style in renderer.STYLES}},
        "muse": evaluate_muse(model, oracles, {"images": images, "steps": 12, "guidance": guidance}),
    }


# ---- shipping -----------------------------------------------------------------------------------------------------
def ship(
    runs: Path, vq_dir: Path, muse_run: Path | None = None, only: list[str] | None = None, clip_run: Path | None = None
) -> None:
    """Copy trained models from ``runs`` (oracles/, glyph/, clip/, muse/) into the package's weights folder; the VQ's
    training record comes from ``vq_dir`` (the VQ run Muse-mini was trained with). ``muse_run`` and ``clip_run`` ship
    other run folders (e.g. a later stage; its earlier stages' records go with it); ``only`` ships just the named
    models."""
    wanted = set(only or ("oracles", "glyph", "clip", "muse"))
    muse_run, clip_run = muse_run or runs / "muse", clip_run or runs / "clip"
    needed = {
        "oracles": [runs / "oracles" / "oracles.safetensors", runs / "oracles" / "training.json"],
        "clip": [clip_run / "clip", clip_run / "training.json"],
        "muse": [muse_run / "muse", muse_run / "training.json"],
    }
    missing = [str(path) for name in wanted for path in needed.get(name, []) if not path.exists()]
    if missing:  # checked before anything shipped is replaced
        raise StylecraftError(f"nothing shipped: {missing[0]} does not exist; train that model first or name its run")
    shipped_vq = WEIGHTS / "muse" / "vqvae"
    vq_weights = "diffusion_pytorch_model.safetensors"
    run_vq = muse_run / "muse" / "vqvae" / vq_weights
    same_vq = "muse" in wanted and _same_bytes(shipped_vq / vq_weights, run_vq)
    if "muse" in wanted and not same_vq:
        # a new VQ ships with the Muse: its training record comes from --vq, which must be the VQ the Muse draws
        if not _same_bytes(vq_dir / "vqvae" / vq_weights, run_vq):
            raise StylecraftError(
                f"nothing shipped: the Muse in {muse_run} draws the tokens of a VQ other than the one in {vq_dir}; "
                "name the VQ run it was trained on with --vq (its recipe's extra.vq, or the base run's --vq)"
            )
        if not (vq_dir / "training.json").is_file():
            raise StylecraftError(
                f"nothing shipped: {vq_dir / 'training.json'} does not exist; the new VQ ships with its training "
                "record, so name the VQ's run folder (python -m stylecraft.world.pretrain vq --out ...) with --vq"
            )
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    if "oracles" in wanted:
        _replace_file(runs / "oracles" / "oracles.safetensors", WEIGHTS / "oracles.safetensors")
        _replace_file(runs / "oracles" / "training.json", WEIGHTS / "oracles.training.json")
    if "glyph" in wanted and (runs / "glyph" / "glyph_oracle.safetensors").is_file():
        _replace_file(runs / "glyph" / "glyph_oracle.safetensors", WEIGHTS / "glyph_oracle.safetensors")
        _replace_file(runs / "glyph" / "training.json", WEIGHTS / "glyph_oracle.training.json")
    # Read before the shipped copy is replaced: the earlier stages' records (the Muse's, and a fine-tuned VQ's), and
    # the VQ's records if the VQ stays.
    earlier = _earlier_stages(muse_run, _shipped_lineage) if "muse" in wanted else []
    vq_earlier = _earlier_stages(vq_dir, _shipped_vq_lineage) if "muse" in wanted and not same_vq else []
    vq_records = {
        name: (shipped_vq / name).read_text()
        for name in ("training.json", LINEAGE)
        if same_vq and (shipped_vq / name).is_file()
    }
    for name, source in (("clip", clip_run / "clip"), ("muse", muse_run / "muse")):
        if name in wanted:  # copied beside the shipped folder first, so a failed copy leaves that one whole
            staging = WEIGHTS / f".{name}.shipping"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging)
            shutil.copy(source.parent / "training.json", staging / "training.json")
            if name == "clip" and (clip_run / LINEAGE).is_file():
                shutil.copy(clip_run / LINEAGE, staging / LINEAGE)
            shutil.rmtree(WEIGHTS / name, ignore_errors=True)
            staging.rename(WEIGHTS / name)
    if "muse" in wanted:
        if earlier:
            write_json(WEIGHTS / "muse" / LINEAGE, earlier)
        for name, text in vq_records.items():  # the same VQ as before: keep the records of its training
            (shipped_vq / name).write_text(text)
        if not same_vq:
            _replace_file(vq_dir / "training.json", shipped_vq / "training.json")
            if vq_earlier:  # a VQ fine-tuned from another: the records of the stages before it, oldest first
                write_json(shipped_vq / LINEAGE, vq_earlier)


def _replace_file(source: Path, target: Path) -> None:
    """Copy ``source`` over ``target`` through a temp file and a rename: an interrupted copy leaves the old file."""
    _atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def _same_bytes(a: Path, b: Path) -> bool:
    """Whether both files exist and hold the same bytes (the same saved weights)."""
    return a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()


def _lineage(shipped: Path) -> list[dict]:
    """The training records of a shipped model folder and of the stages before it, oldest first."""
    earlier = shipped / LINEAGE
    before = json.loads(earlier.read_text()) if earlier.is_file() else []
    record = shipped / "training.json"
    return [*before, json.loads(record.read_text())] if record.is_file() else before


def _shipped_lineage() -> list[dict]:
    return _lineage(WEIGHTS / "muse")


def _shipped_vq_lineage() -> list[dict]:
    return _lineage(WEIGHTS / "muse" / "vqvae")


def _earlier_stages(run: Path, shipped_lineage=_shipped_lineage) -> list[dict]:
    """The training records of the runs a run continued (its recipe's ``extra.init``, a model folder inside a run
    folder, and theirs), oldest first; ``shipped_lineage`` gives those of "shapes", the model shipped now."""
    records, record, folder = [], json.loads((run / "training.json").read_text()), run
    while init := record["recipe"].get("extra", {}).get("init"):
        if init == "shapes":
            # the model shipped when that run started, as it saved it (older runs did not: the one shipped now)
            saved = folder / LINEAGE
            return [*(json.loads(saved.read_text()) if saved.is_file() else shipped_lineage()), *records]
        folder = Path(init).parent
        if not (folder / "training.json").is_file():
            break
        record = json.loads((folder / "training.json").read_text())
        records.insert(0, record)
    return records


def build_parser(prog: str = "python -m stylecraft.world.pretrain") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("model", choices=["oracles", "glyph", "vq", "clip", "muse", "ship", "evaluate"])
    parser.add_argument(
        "--out", type=Path, help="run folder (weights, checkpoint.pt, training.json); for evaluate, evaluation.json's"
    )
    parser.add_argument("--section", help="recipe section to use (default: the model's name)")
    parser.add_argument("--recipe", type=Path, help=f"recipe JSON (default {RECIPES.name} in the package)")
    parser.add_argument("--steps", type=int, help="override the recipe's step count")
    parser.add_argument("--max-minutes", type=float, help="override the recipe's wall-clock budget")
    parser.add_argument("--threads", type=int, help="override the recipe's torch CPU threads")
    parser.add_argument("--seed", type=int, help="override the recipe's seed (e.g. a second run of one recipe)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, help="override the recipe's precision (bf16: autocast, channels-last convs)"
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--vq", type=Path, default=Path("runs/world/vq"), help="VQ run folder (for muse)")
    parser.add_argument(
        "--clip",
        type=Path,
        help="CLIP run folder: for muse, its text tower (default runs/world/clip); for ship, the one to ship "
        "(default RUNS/clip)",
    )
    parser.add_argument("--runs", type=Path, default=Path("runs/world"), help="folder of runs to ship")
    parser.add_argument(
        "--muse",
        type=Path,
        help="Muse run folder to ship (default RUNS/muse), e.g. a later stage; for evaluate, a run or Muse-mini "
        "folder (default: the shipped one)",
    )
    parser.add_argument("--only", nargs="+", choices=["oracles", "glyph", "clip", "muse"], help="ship just these")
    parser.add_argument(
        "--images", type=int, default=128, help="evaluate: renders per style for the VQ, prompts per group for Muse"
    )
    parser.add_argument(
        "--oracles",
        type=Path,
        default=Path("runs/world/oracles/oracles.safetensors"),
        help="oracle weights for evaluation (default: a fresh run's, else the shipped ones)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    try:
        _run(parser, parser.parse_args(argv))
    except StylecraftError as error:
        raise SystemExit(f"error: {error}") from None


def run_cli(args: argparse.Namespace) -> int:
    """``stylecraft world pretrain ...``: this module's command line (errors reach stylecraft's one-line handler)."""
    parser = build_parser("stylecraft world pretrain")
    _run(parser, parser.parse_args(args.args))
    return 0


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.model == "ship":
        ship(args.runs, args.vq, args.muse, args.only, args.clip)
        return
    if args.model == "evaluate":  # a model's VQ and Muse-mini again, judged by --oracles (default: the shipped)
        if args.images < 1:
            raise StylecraftError(
                f"--images must be at least 1 (renders per style, prompts per group), got {args.images}"
            )
        model = args.muse or WEIGHTS / "muse"
        model = model / "muse" if (model / "muse").is_dir() else model
        torch.set_num_threads(args.threads or 2)
        result = evaluate_models(model, evaluation_oracles(args.oracles), args.images)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / "evaluation.json", result)
        print(json.dumps({"vq": result["vq"]["mean_reconstruction"], "muse": result["muse"]}))
        return
    if args.out is None:
        parser.error("--out is required")
    recipe = load_recipe(
        args.section or args.model,
        args.recipe,
        {
            "steps": args.steps,
            "threads": args.threads,
            "max_minutes": args.max_minutes,
            "seed": args.seed,
            "precision": args.precision,
        },
    )
    torch.set_num_threads(recipe.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.model == "oracles":
        train_oracles(recipe, args.out, args.resume)
        return
    if args.model == "glyph":
        train_glyph_oracle(recipe, args.out, args.resume)
        return
    if args.model == "vq":
        train_vq(recipe, args.out, args.resume, args.oracles)
    elif args.model == "clip":
        train_clip(recipe, args.out, args.resume)
    else:
        train_muse(recipe, args.out, args.resume, args.vq, args.clip or Path("runs/world/clip"), args.oracles)


if __name__ == "__main__":
    main()
