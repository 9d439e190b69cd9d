"""Train Muse-mini (``WorldUVit2DModel``) on the VQ's tokens and the mini CLIP's text tower; measure its samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import StylecraftError
from ..io import write_json
from . import RECIPES as TRAIN_RECIPES
from . import SAMPLING, renderer, space
from .oracles import Oracles, oracle_accuracy
from .pretrain import EVAL_SEED, LINEAGE, Recipe, evaluation_oracles, finish, to_tensor, train_loop
from .ship import _shipped_lineage
from .train_clip import clip_text_encoder
from .train_vq import evaluate_vq


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
    # ``extra.data: "space"`` (world v2): each chunk is ``space.mixed_batch``'s, the space's seen styles with a share
    # ``extra.named_fraction`` of named seen ones, captions naming each style by its descriptor.
    pool_size = recipe.extra.get("pool_size", 50_000)
    chunk = 1024
    on_space = space.on_space(recipe.extra)
    # Tokens on the shape's outline decide which shape is drawn, yet a small shape has a handful of them among 64;
    # ``outline_weight`` > 1 weighs their loss up (1: Muse's plain masked-token mean).
    outline_weight = float(recipe.extra.get("outline_weight", 1.0))
    if on_space and (outline_weight != 1.0 or recipe.extra.get("small_fraction") is not None):
        raise StylecraftError(
            "extra.outline_weight and extra.small_fraction work on the named-style pool (v1); a run with extra.data "
            "'space' draws mixed batches: leave both out"
        )
    if on_space and pool_size % chunk:
        raise StylecraftError(f"extra.pool_size must be a multiple of {chunk} with extra.data 'space', got {pool_size}")
    rng = np.random.default_rng(recipe.seed)
    pool_scenes = None if on_space else muse_pool(pool_size, rng, recipe.extra.get("small_fraction"))
    pool_captions = [""] * pool_size if on_space else pool_scenes.captions()
    side = transformer.config.sample_size
    pool_tokens = torch.full((pool_size, side, side), -1)
    pool_outline = torch.zeros((pool_size, side, side), dtype=torch.bool)

    def tokens_for(idx: np.ndarray) -> torch.Tensor:
        for start in np.unique(idx // chunk) * chunk:
            if pool_tokens[start, 0, 0] >= 0:
                continue
            if on_space:
                share = recipe.extra.get("named_fraction", 0.25)
                batch = space.mixed_batch(chunk, [recipe.seed, 7, start // chunk], share)
                images, pool_captions[start : start + chunk] = batch.images, batch.captions
            else:
                part = renderer.Scenes(**{k: v[start : start + chunk] for k, v in pool_scenes.labels().items()})
                images = renderer.render(part, start)
                if outline_weight != 1.0:
                    outline = renderer.outline_tokens(part, start, patch=renderer.SIZE // side)
                    pool_outline[start : start + chunk] = torch.from_numpy(outline)
            pool_tokens[start : start + chunk] = model.encode_images(to_tensor(images))
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
        evaluate_muse(out / "muse", evaluation_oracles(oracles), recipe.extra.get("eval", {}), on_space),
    )


def evaluate_muse(folder: Path, oracles: Oracles, settings: dict, on_space: bool = False) -> dict:
    """Oracle accuracy of CFG samples on fresh prompts of seen styles (and, for reference, held-out styles); with
    ``on_space`` also prompts naming the space's styles (``space_eval.measure_prompted``: shape, colour and size by
    the space oracles, style by the asked style's retrieval among 50)."""

    from ..muse import load_muse

    pipe = load_muse(str(folder)).reference_pipeline()
    n, steps, guidance = settings.get("images", 128), settings.get("steps", 12), settings.get("guidance", 5.0)
    result = {"sampler": {"steps": steps, "guidance_scale": guidance, "images": n}}

    def draw(prompts: list[str]) -> torch.Tensor:
        images = []
        for i in range(0, len(prompts), 32):
            output = pipe(
                prompts[i : i + 32],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=torch.Generator().manual_seed(EVAL_SEED + i),
                output_type="pt",
            )
            images.append(output.images)
        return torch.cat(images)

    for group, styles in (("seen", renderer.SEEN_STYLES), ("held_out", renderer.HELD_OUT_STYLES)):
        scenes = renderer.sample_scenes(n, np.random.default_rng(EVAL_SEED), styles)
        accuracy = oracle_accuracy(oracles, draw(scenes.captions()), scenes.labels())
        result[group] = {k: round(v, 4) for k, v in accuracy.items()}
    if on_space:
        from .space_eval import load_space_oracles, prompted_report

        result["space"] = prompted_report(draw, load_space_oracles(), n, EVAL_SEED)
    return result


def evaluate_models(model: Path, oracles: Oracles, images: int, guidance: float = 2.0) -> dict:
    """The model card's evaluations of a Muse-mini folder (aMUSEd layout) again, judged by ``oracles``: its VQ's
    reconstructions of ``images`` fresh renders per style, and ``images`` prompts per style group for Muse-mini (the
    fixed evaluation seeds, as in training.json). For judging a model with other oracles than it trained with."""
    from ..muse import load_muse

    vq = load_muse(str(model)).vqvae.eval()  # refuses a folder without the aMUSEd layout, naming what is missing
    with torch.no_grad():
        vq_result = evaluate_vq(vq, oracles, images)
    from .space_eval import autoencoder_report, load_space_oracles
    from .train_vq import reconstruct

    vq_space = autoencoder_report(lambda x: reconstruct(vq, x), load_space_oracles(), images, EVAL_SEED)
    return {
        "model": str(model),
        "vq": {key: vq_result[key] for key in ("mean_original", "mean_reconstruction", "pixel_mse")}
        | {"per_style": {style: vq_result[style] for style in renderer.STYLES}, "space": vq_space},
        "muse": evaluate_muse(model, oracles, {"images": images, "steps": 12, "guidance": guidance}),
    }
