"""Training a StyleDrop adapter (or LoRA) on a few (image, prompt) pairs with Muse's masked-token objective.

The loop is the algorithm (StyleDrop §3.1; Muse §2): VQ-encode the style image(s) once (with ``shift``, also
copies moved by whole tokens), then repeat batch -> cosine-schedule mask -> forward with the adapter ->
cross-entropy on masked tokens -> backward -> clip -> Adam step. Only adapter weights train; the text encoder, the
VQ model and the base transformer are frozen.
It runs through ``accelerate.Accelerator``, so ``accelerate launch -m stylecraft train ...`` spreads it over GPUs
and machines unchanged (each process draws its own batches; the main process writes files).

Checkpoints hold the adapter, Adam's state, the step and the random generator's state, so ``--resume`` continues to
exactly the weights an uninterrupted run reaches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from .adapters import AdaptedTransformer, count_parameters
from .errors import StylecraftError
from .io import (
    MARKER,
    check_out,
    check_place,
    make_grid,
    new_folder,
    partial_of,
    recover,
    remove,
    save_png,
    swap_into_place,
    to_pil_images,
    to_tensor_image,
    write_bytes,
    write_json,
)
from .locks import folder_lock
from .muse import MuseModel, mask_tokens, masked_token_loss, shift_grid, shift_offsets
from .sampling import SamplingConfig, sample_images
from .validation import TRAIN_CONFIG, check_fields, read_json, read_trainer_state

RECIPES_DIR = Path(__file__).parent / "recipes"
ADAPTER_NAME = "adapter"
CHECKPOINT_DIR = "checkpoint"
_NOT_EMPTY = "pass --resume to continue or --overwrite"  # the fix when --out holds a run
# Settings that may change between a run and its --resume (they don't alter the optimisation path).
RESUMABLE_CHANGES = {"steps", "sample_every", "checkpoint_every", "sample_steps", "sample_guidance"}  # not weights


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's Round 1 (StyleDrop Appendix B)."""

    adapter_type: str = "styledrop"  # "styledrop" (paper's bottleneck adapter) or "lora" (peft)
    rank: int = 4  # d_prj (styledrop) or LoRA r
    shared: bool | None = None  # factorised sharing (paper: Round 1 shared, Round 2 not); None: styledrop -> True
    lora_alpha: int | None = None  # LoRA alpha (default = rank)
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v"])  # LoRA targets
    extra_sites: list[str] = field(default_factory=list)  # styledrop: further module paths with an adapter each
    steps: int = 1000  # optimisation steps
    lr: float = 3e-5  # Adam learning rate
    batch_size: int = 8  # images per step (drawn with replacement from the training pairs)
    weight_decay: float = 0.0  # Adam(W) weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 0  # seeds adapter init, batches, shifts and masks
    shift: int = 0  # augmentation: move each batch image by up to N whole VQ tokens (0: off, the paper)
    sample_every: int = 0  # write samples/step_N.png every N steps (0: never)
    checkpoint_every: int = 100  # resumable checkpoint every N steps (0: only at the end)
    mixed_precision: str = "no"  # accelerate: "no", "fp16" or "bf16"
    sample_steps: int = 12  # decoding steps of the progress samples
    sample_guidance: float | None = None  # CFG of the progress samples (None: the model's, MuseModel.sampling_defaults)
    # DreamBooth (Ruiz et al. 2023) class-prior preservation: on when class_prompt is set (dreambooth.py)
    class_prompt: str | None = None  # prompt of the prior images: the instance caption without its rare token
    num_class_images: int = 0  # images the frozen base draws for class_prompt (paper: about 1000)
    lambda_prior: float = 1.0  # weight of the prior-preservation term, λ of DreamBooth Eq. 2 (paper: 1)

    def __post_init__(self) -> None:
        if self.shared is None:
            self.shared = self.adapter_type == "styledrop"
        check_fields(vars(self), TRAIN_CONFIG, flags=True)  # types, finite numbers and ranges
        if self.class_prompt is not None and self.num_class_images < 1:
            raise StylecraftError(
                f"--num-class-images must be at least 1 with a class prompt, got {self.num_class_images}"
            )


def default_recipe(model: str | None, kind: str = "round1") -> str:
    """The recipe to train ``model`` (a --model value or ``MuseModel.name``) with when none is named: the one its
    folder's model_index.json names for ``kind`` (the shapes models name their own), else the paper's ``kind``
    (round1, round2; lora: diffusers' aMUSEd recipe; full: round1's schedule)."""
    from .muse import model_defaults

    recipes = model_defaults(model).get("recipes", {})
    if kind in recipes:
        return recipes[kind]
    return "round1" if kind == "full" else kind


def load_recipe(recipe: str | Path | None = None, **overrides) -> TrainConfig:
    """A TrainConfig from a recipe name (round1, round2, lora, ...) or JSON file, with non-None ``overrides``."""
    values: dict = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            path = RECIPES_DIR / f"{recipe}.json"
        if not path.is_file():
            names = sorted(p.stem for p in RECIPES_DIR.glob("*.json"))
            raise StylecraftError(f"unknown recipe {recipe!r}; use one of {', '.join(names)} or a JSON file")
        values = read_json(path, "fix the recipe file or name a built-in recipe")
        if not isinstance(values, dict):
            raise StylecraftError(f'recipe {path} must hold a JSON object of settings, e.g. {{"steps": 300}}')
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known - {"description"})
    if unknown:
        raise StylecraftError(f"recipe has unknown settings {unknown}; known: {sorted(known)}")
    values = {k: v for k, v in values.items() if k in known}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


def _check_tokens(muse: MuseModel, tokens: torch.Tensor, count: int) -> torch.Tensor:
    side = muse.resolution // muse.vae_scale_factor
    if tuple(tokens.shape) != (count, side, side):
        raise StylecraftError(
            f"got VQ tokens of shape {tuple(tokens.shape)} for {count} images; this model's are ({count}, {side}, "
            f"{side}): the tokens were made by another base model, so train on the images alone"
        )
    if tokens.dtype != torch.long or tokens.min() < 0 or tokens.max() >= muse.mask_token_id:
        raise StylecraftError("VQ tokens must be integer codes of this model's codebook; train on the images alone")
    return tokens.to(muse.device)


def train_adapter(
    muse: MuseModel,
    images: list[Image.Image],
    prompts: list[str],
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    tokens: torch.Tensor | None = None,
    prior_tokens: torch.Tensor | None = None,
) -> AdaptedTransformer:
    """Train an adapter on (image, prompt) pairs and write the adapter folder ``out``. Returns the adapted model.

    ``on_step(step, loss)`` is called after every optimisation step (progress displays use it).

    ``images`` must already be RGB at the model's resolution (``stylecraft.io.load_image(path, size)``).
    ``prompts`` holds one prompt for all images or one per image. ``tokens`` [N, h, w]: the images' VQ tokens
    when they are known, i.e. for images this model drew (Round 2). Training then uses them instead of encoding
    the images again: the VQ does not give back the tokens an image was decoded from, and what it gives back can
    lose fine texture (``feedback.train_round``).
    ``prior_tokens`` [M, h, w]: the frozen base's own drawings of ``config.class_prompt`` (DreamBooth's class-prior
    images, ``dreambooth.class_prior_tokens``); each step then adds λ_prior × the loss on a batch of them.
    """
    from accelerate import Accelerator

    out = Path(os.path.normpath(out))  # "out/" and "a/../out" name their folder: "out"
    if not images:
        raise StylecraftError("no training images; pass --image at least once")
    if len(prompts) == 1:
        prompts = prompts * len(images)
    if len(prompts) != len(images):
        raise StylecraftError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt or one per image")
    if any(not p.strip() for p in prompts):
        raise StylecraftError("empty prompt; describe the image and its style, e.g. 'A house in watercolor style'")
    check_place(out)
    inputs = training_inputs(muse, images, prompts, tokens)  # what a --resume must train on again
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=muse.device.type == "cpu")
    main = accelerator.is_main_process  # only the main process writes, so only it locks and tidies the folder
    with folder_lock(out, "training") if main else nullcontext():
        folder = out  # where this run writes: `out`, or beside it (swapped in at the end) when replacing a run
        if main:
            recover(out)  # what a killed run left: a swap cut short, a half-built folder or checkpoint
            recover(out / CHECKPOINT_DIR)
        if resume:
            if not (out / CHECKPOINT_DIR / "trainer_state.json").is_file():
                raise StylecraftError(
                    f"nothing to resume in {out}: no {CHECKPOINT_DIR}/trainer_state.json; drop --resume"
                )
            _check_resume(read_trainer_state(out / CHECKPOINT_DIR / "trainer_state.json"), config, inputs)
        elif main:
            if (out / MARKER).is_file() and all(p.name == "samples" or p.name[0] == "." for p in out.iterdir()):
                remove(out)  # a run killed before its first checkpoint: nothing to resume, nothing finished
            check_out(out, overwrite, _NOT_EMPTY)
            if out.is_dir() and any(out.iterdir()):
                folder = partial_of(out)  # --overwrite: the finished run stays until this one is complete
            new_folder(folder)
        checkpoint = folder / CHECKPOINT_DIR

        torch.manual_seed(config.seed)  # adapter initialisation
        model = AdaptedTransformer(muse)
        adapter_config = model.new_config(
            config.adapter_type,
            config.rank,
            config.shared,
            lora_alpha=config.lora_alpha,
            target_modules=config.target_modules,
            extra_sites=list(config.extra_sites),
            prompts=list(dict.fromkeys(prompts)),
            training=asdict(config),
        )
        model.add_adapter(ADAPTER_NAME, adapter_config)
        parameters = model.adapter_parameters(ADAPTER_NAME)
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
        generator = torch.Generator().manual_seed(config.seed + accelerator.process_index)
        start = 0
        log: list[dict] = []
        if resume:
            start, log = _load_checkpoint(checkpoint, model, optimizer, generator)

        # Frozen inputs, computed once: VQ tokens of the images, text embeddings of the prompts.
        resolution = muse.resolution
        pixels = torch.stack([to_tensor_image(image) for image in images])
        if pixels.shape[-1] != resolution or pixels.shape[-2] != resolution:
            raise StylecraftError(
                f"training images must be {resolution}x{resolution}; load them with load_image(path, size)"
            )
        if tokens is not None:
            tokens = _check_tokens(muse, tokens, len(images))
        tokens = shifted_tokens(muse, pixels, tokens, config.shift)  # [N, variants, h, w]
        if prior_tokens is not None:  # DreamBooth's class-prior images, checked like known tokens (λ_prior 0: unused)
            prior_tokens = _check_tokens(muse, prior_tokens, len(prior_tokens)) if config.lambda_prior > 0 else None
        pooled, hidden = muse.encode_prompts(prompts)  # [N, proj], [N, 77, hidden]
        micro_conds = muse.micro_conds(config.batch_size, resolution, resolution)

        model, optimizer = accelerator.prepare(model, optimizer)
        model.train()
        trainable = count_parameters(parameters)
        total = count_parameters(muse.transformer) - (trainable if config.adapter_type == "lora" else 0)
        disable = not progress or os.environ.get("STYLECRAFT_QUIET") == "1" or not accelerator.is_main_process
        bar = tqdm(range(start, config.steps), desc="training", initial=start, total=config.steps, disable=disable)
        started = time.time()
        for step in bar:
            # batch -> shift -> mask -> forward -> loss (Muse masked-token cross-entropy, cosine mask schedule)
            index = torch.randint(len(images), (config.batch_size,), generator=generator).to(tokens.device)
            variant = torch.zeros_like(index)
            if tokens.shape[1] > 1:
                variant = torch.randint(tokens.shape[1], (config.batch_size,), generator=generator).to(tokens.device)
            target = tokens[index, variant]
            masked, mask = mask_tokens(target, muse.mask_token_id, generator)
            logits = model(
                [ADAPTER_NAME] * config.batch_size, masked, hidden[index], pooled[index], micro_conds
            )  # [batch, codebook, h, w]
            loss = masked_token_loss(logits, target, mask)
            if prior_tokens is not None:  # DreamBooth Eq. 2: + λ_prior × the same loss on the base's class images
                prior_loss = class_prior_loss(muse, model, prior_tokens, config, generator)
                loss = loss + config.lambda_prior * prior_loss
            if not torch.isfinite(loss):
                where = f"the last good checkpoint is in {checkpoint}" if checkpoint.exists() else "no checkpoint yet"
                raise StylecraftError(f"loss became {loss.item()} at step {step}; {where}; lower --lr and --resume")
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if not all(torch.isfinite(p).all() for p in parameters):  # before any checkpoint or adapter holds them
                raise StylecraftError(
                    f"the adapter weights became inf or NaN at step {step + 1}: --lr {config.lr} is likely too high "
                    "(or a training image is bad); lower --lr and train again"
                )

            log.append({"step": step + 1, "loss": round(loss.item(), 5)})
            if prior_tokens is not None:
                log[-1]["prior_loss"] = round(prior_loss.item(), 5)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            done = step + 1
            if on_step is not None:
                on_step(done, loss.item())
            if accelerator.is_main_process:
                unwrapped = accelerator.unwrap_model(model)
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                    _save_checkpoint(checkpoint, unwrapped, optimizer, generator, done, config, log, inputs)
                if config.sample_every and done % config.sample_every == 0:
                    write_samples(muse, unwrapped, prompts, folder / "samples" / f"step_{done:06d}.png", config)
        model.eval()
        unwrapped = accelerator.unwrap_model(model)
        if accelerator.is_main_process:
            _save_checkpoint(checkpoint, unwrapped, optimizer, generator, config.steps, config, log, inputs)
            unwrapped.configs[ADAPTER_NAME].training.update(
                trainable_parameters=trainable, base_parameters=total, seconds=round(time.time() - started, 2)
            )
            write_json(folder / "train_log.json", log)
            for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):  # provenance: what it learned from
                save_png(image, folder / "train_images" / f"{i:03d}.png", {"prompt": prompt})
            unwrapped.save_adapter(ADAPTER_NAME, folder)  # adapter_config.json last: the folder is now complete
            if folder != out:
                swap_into_place(out)
    for parameter in parameters:
        parameter.requires_grad_(False)
    return unwrapped


def class_prior_loss(
    muse: MuseModel, model: AdaptedTransformer, prior_tokens: torch.Tensor, config: TrainConfig, generator
) -> torch.Tensor:
    """DreamBooth's prior-preservation term (Ruiz et al. 2023, Eq. 2, its second term): Muse's masked-token loss,
    with the adapter on, on a second batch drawn from the frozen base's own images of ``config.class_prompt``. It
    holds the adapter to what the base draws for the class, so that the object is learnt by the rare token alone."""
    if not config.class_prompt:
        raise StylecraftError("prior tokens need the class prompt they were drawn for; pass --class-prompt")
    index = torch.randint(len(prior_tokens), (config.batch_size,), generator=generator).to(prior_tokens.device)
    target = prior_tokens[index]  # [batch, h, w]
    masked, mask = mask_tokens(target, muse.mask_token_id, generator)
    pooled, hidden = muse.encode_prompts([config.class_prompt])  # [1, proj], [1, 77, hidden]
    micro_conds = muse.micro_conds(config.batch_size, muse.resolution, muse.resolution)
    rows = [ADAPTER_NAME] * config.batch_size
    logits = model(rows, masked, hidden.expand(len(rows), -1, -1), pooled.expand(len(rows), -1), micro_conds)
    return masked_token_loss(logits, target, mask)  # logits [batch, codebook, h, w]


def shifted_tokens(muse: MuseModel, pixels: torch.Tensor, tokens: torch.Tensor | None, shift: int) -> torch.Tensor:
    """VQ tokens [N, variants, h, w] of each image moved by every whole-token offset up to ``shift`` (variant 0:
    unmoved; ``shift`` 0 gives that one only).

    The moved images are encoded again rather than the token grid rolled: the VQ spells the same texture with
    different codes at different places (about half the codes change when an image moves by one token), and
    meeting those spellings is what keeps the adapter from learning one layout of codes. Known tokens (images this
    model drew, Round 2) are moved as grids instead, because encoding them again would lose texture.
    """
    factor = muse.vae_scale_factor
    variants = []
    for dx, dy in shift_offsets(shift):
        if tokens is not None:
            variants.append(shift_grid(tokens, dx, dy))
        elif (dx, dy) == (0, 0):
            variants.append(muse.encode_images(pixels))
        else:
            variants.append(muse.encode_images(shift_grid(pixels, dx * factor, dy * factor)))
    return torch.stack(variants, dim=1)


def write_samples(muse: MuseModel, model: AdaptedTransformer, prompts: list[str], path: Path, config: TrainConfig):
    """A grid of one image per distinct prompt with the adapter (fixed seed), for watching training."""
    texts = list(dict.fromkeys(prompts))
    defaults = muse.sampling_defaults
    sampling = SamplingConfig(
        steps=config.sample_steps,
        guidance_scale=defaults["guidance_scale"] if config.sample_guidance is None else config.sample_guidance,
        lambda_a=defaults["lambda_a"],
    )
    was_training = model.training
    model.eval()
    images = sample_images(
        muse,
        texts,
        sampling,
        model=model,
        adapter=ADAPTER_NAME,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    model.train(was_training)
    save_png(make_grid(to_pil_images(images), columns=len(texts)), path, {"prompts": texts})


def training_inputs(
    muse: MuseModel, images: list[Image.Image], prompts: list[str], tokens: torch.Tensor | None = None
) -> dict:
    """What a run trains on, as a checkpoint records it: the base model's fingerprints, a hash of each image (and of
    known tokens) and the prompts, so a --resume with other inputs is refused (``_check_resume``)."""

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    return {
        "base": [muse.fingerprint, muse.weights_fingerprint],
        "images": [digest(f"{image.mode} {image.size}".encode() + image.tobytes()) for image in images],
        "prompts": list(prompts),
        "tokens": None if tokens is None else digest(tokens.cpu().numpy().tobytes()),
    }


def _check_resume(state: dict, config: TrainConfig, inputs: dict) -> None:
    """Refuse a --resume whose settings or inputs differ from the checkpoint's, naming what differs."""
    current = asdict(config)
    # a setting added after the checkpoint was written (e.g. shift) had its default then
    saved = {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **state["config"]}
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise StylecraftError(f"--resume with changed settings ({details}); use the original settings or a new --out")
    before = state.get("inputs")  # None: a checkpoint written before inputs were recorded
    if before is None or before == inputs:
        return
    if before.get("base") != inputs["base"]:
        problem = "another base model (--model)"
    elif before.get("images") != inputs["images"]:
        old, new = before.get("images") or [], inputs["images"]
        if len(old) != len(new):
            problem = f"{len(new)} training images, the checkpoint has {len(old)}"
        else:
            index = next(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)
            problem = f"--image number {index + 1} is another picture"
    elif before.get("prompts") != inputs["prompts"]:
        old, new = before.get("prompts"), inputs["prompts"]
        a, b = next((a, b) for a, b in zip(old, new, strict=True) if a != b)  # as many as images, which match
        problem = f"prompt {a!r} became {b!r}"
    else:
        problem = "other known tokens of the images"
    raise StylecraftError(
        f"--resume differs from the checkpoint: {problem}; resume with the original inputs or use a new --out"
    )


def _save_checkpoint(
    folder: Path,
    model: AdaptedTransformer,
    optimizer,
    generator: torch.Generator,
    step: int,
    config: TrainConfig,
    log: list[dict],
    inputs: dict,
) -> None:
    """Write the checkpoint beside ``folder``, then swap it in (``io.swap_into_place``): a kill never leaves half a
    checkpoint, nor none once there was one."""
    optimizer_state = optimizer.state_dict()
    tensors = {f"adapter.{k}": v for k, v in model.adapter_state_dict(ADAPTER_NAME).items()}
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()
    meta = {"step": step, "config": asdict(config), "param_groups": optimizer_state["param_groups"], "log": log}
    meta["inputs"] = inputs
    staging = partial_of(folder)
    try:
        write_bytes(staging / "state.safetensors", save(tensors))
        write_bytes(staging / "trainer_state.json", json.dumps(meta, default=str).encode())
    except BaseException:
        remove(staging)  # e.g. a full disk: nothing half-written stays behind
        raise
    swap_into_place(folder)


def _load_checkpoint(folder: Path, model: AdaptedTransformer, optimizer, generator: torch.Generator):
    meta = read_trainer_state(folder / "trainer_state.json")
    try:
        tensors = load_file(folder / "state.safetensors")
    except Exception as err:  # safetensors raises its own error type for truncated files
        raise StylecraftError(f"checkpoint {folder} is corrupt ({err}); delete it and train from scratch") from None
    model.load_adapter_state_dict(
        ADAPTER_NAME, {k[len("adapter.") :]: v for k, v in tensors.items() if k.startswith("adapter.")}
    )
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    generator.set_state(tensors["generator"])
    return meta["step"], meta["log"]
