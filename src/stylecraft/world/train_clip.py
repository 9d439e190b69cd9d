"""Train the shapes world's mini CLIP (contrastive, then an image-tower stage) and measure it zero-shot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StylecraftError
from ..io import write_json
from . import WEIGHTS, renderer, space
from .oracles import ATTRIBUTES
from .pretrain import EVAL_SEED, LINEAGE, Recipe, finish, to_tensor, train_loop


def build_tokenizer(folder: Path, max_length: int, resume: bool = False, words: list[str] | None = None):
    """The world's CLIP tokenizer in ``folder`` (``words``: default the named styles' captions' words); a resumed
    run keeps the one it started with (rewriting it would renumber the tokens under the checkpoint's embeddings)."""
    from transformers import CLIPTokenizer

    from ..tokenizer import write_clip_tokenizer

    if not (resume and (folder / "vocab.json").is_file()):
        write_clip_tokenizer(folder, words or renderer.vocabulary(), model_max_length=max_length)
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def train_clip(recipe: Recipe, out: Path, resume: bool) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(recipe.seed)
    if recipe.extra.get("init"):
        train_clip_vision(recipe, out, resume)
        return
    max_length = recipe.extra.get("max_length", 32)
    on_space = space.on_space(recipe.extra)  # world v2: the style space's descriptors too
    tokenizer = build_tokenizer(out / "clip", max_length, resume, space.vocabulary() if on_space else None)
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
        if on_space:  # seen named styles and seen space styles, batch ``step`` drawn directly
            batch = space.recipe_batch(recipe.extra, recipe.batch_size, recipe.seed, step)
            images, captions = batch.images, batch.captions
        else:
            images, scenes = next(data)
            captions = scenes.captions()
        ids = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        outputs = clip(input_ids=ids.input_ids, pixel_values=to_tensor(images) * 2 - 1, return_loss=True)
        return outputs.loss, {"scale": round(clip.logit_scale.exp().item(), 2)}

    wall, history = train_loop(recipe, out, {"clip": clip}, list(clip.parameters()), step_fn, resume)
    clip.save_pretrained(out / "clip")
    # Images go in as [-1, 1] at 64×64: a processor that does exactly that, for users of CLIPProcessor.
    CLIPImageProcessor(
        size={"shortest_edge": renderer.SIZE}, crop_size=renderer.SIZE, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(out / "clip")
    clip = CLIPModel.from_pretrained(out / "clip", local_files_only=True).eval()
    metrics = evaluate_clip(clip, tokenizer, recipe.eval_images)
    if on_space:
        metrics["space"] = evaluate_clip_space(clip, tokenizer, recipe.eval_images)
    finish(out, "clip", recipe, wall, history, metrics)


@torch.no_grad()
def evaluate_clip_space(clip, tokenizer, n: int) -> dict:
    """On renders in the space's seen styles and in its held-out families: zero-shot shape and colour (the true
    caption against the captions that change only that) and image->text retrieval top-1 among ``n`` captions."""
    result = {}
    for group, held_out in (("seen", False), ("held_out", True)):
        images, scenes, ids = space.render_batch(n, EVAL_SEED, held_out)
        image = F.normalize(clip.get_image_features(pixel_values=to_tensor(images) * 2 - 1).pooler_output, dim=-1)
        row = {}
        for name in ("shape", "colour"):
            options = []
            for value in range(len(ATTRIBUTES[name])):
                changed = renderer.Scenes(**{k: v.copy() for k, v in scenes.labels().items()})
                getattr(changed, name)[:] = value
                options.append((image * clip_embed_text(clip, tokenizer, space.captions(changed, ids))).sum(-1))
            truth = torch.from_numpy(getattr(scenes, name))
            row[f"zero_shot_{name}"] = round((torch.stack(options, 1).argmax(1) == truth).float().mean().item(), 4)
        captions = space.captions(scenes, ids)
        retrieved = (image @ clip_embed_text(clip, tokenizer, captions).T).argmax(1).tolist()
        row[f"retrieval_top1_of_{n}"] = round(
            float(np.mean([captions[j] == captions[i] for i, j in enumerate(retrieved)])), 4
        )
        result[group] = row
    return result


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
