"""Train the shapes world's VQ tokenizer (``WorldVQModel``) and measure its reconstructions with the oracles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StylecraftError
from . import renderer, space
from .oracles import ATTRIBUTES, Oracles, oracle_accuracy
from .pretrain import EVAL_SEED, Recipe, evaluation_oracles, finish, to_tensor, train_loop


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
    # ``extra.data: "space"`` (world v2): batch ``step`` is ``space.recipe_batch``'s, the space's seen styles plus a
    # share of the named ones, drawn from (seed, step) so a resumed run continues the stream. Edge and fill weights
    # need the v1 stream's distance fields, so a space run weighs regions with ``pooled_weight`` instead.
    on_space = space.on_space(recipe.extra)
    if on_space and (edge_weight or fill_weight):
        raise StylecraftError(
            "extra.edge_weight and extra.fill_weight need the named-style stream's distance fields; a run with "
            "extra.data 'space' takes extra.pooled_weight instead (set the other two to 0)"
        )
    if on_space:

        def batch_for(step):
            return space.recipe_batch(recipe.extra, recipe.batch_size, recipe.seed, step).images, None

    else:
        stream = renderer.stream_with_edges(recipe.batch_size, recipe.seed, edges=edge_weight > 0 or fill_weight > 0)

        def batch_for(step):
            images, _, distance = next(stream)
            return images, distance

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
        images, distance = batch_for(step)
        x = to_tensor(images)
        latents = vq.encode(x).latents.float()  # [n, c, h, w]; float32 also under a bf16 recipe
        if step < autoencoder_steps:
            reconstruction = vq.decoder(vq.post_quant_conv(latents)).float()
            return reconstruction_loss(reconstruction, x, distance), {"phase": "autoencoder"}
        with torch.autocast("cpu", enabled=False):  # nearest codes in float32: bfloat16 distances pick wrong codes
            if step == autoencoder_steps and autoencoder_steps:
                codebook = codebook_kmeans(vq, recipe.seed, vq.config.num_vq_embeddings, on_space)
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
    metrics = evaluate_vq(vq, evaluation_oracles(oracles), recipe.eval_images)
    if on_space:  # per family of the space, held-out ones included (the VQ never saw those)
        from .space_eval import autoencoder_report, load_space_oracles

        with torch.no_grad():
            metrics["space"] = autoencoder_report(
                lambda x: reconstruct(vq, x), load_space_oracles(), recipe.eval_images, EVAL_SEED
            )
    finish(out, "vq", recipe, wall, history, metrics)


@torch.no_grad()
def codebook_kmeans(
    vq, seed: int, codes: int, on_space: bool = False, images: int = 512, iterations: int = 20
) -> torch.Tensor:
    """``codes`` k-means centres of the encoder's latent vectors on ``images`` fresh renders (seeded): of the named
    styles, or with ``on_space`` of the space's seen styles and a quarter named ones."""
    if on_space:
        from .space import mixed_batch

        rendered = mixed_batch(images, seed + 7_777).images
    else:
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
