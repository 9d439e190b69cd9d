"""The public Python API: ``load``, ``train`` and ``sample``. The CLI only parses arguments and calls these.

import stylecraft
muse = stylecraft.load()                                   # the shapes world model (offline)
stylecraft.train(muse, ["ref.png"], ["a red circle in neon glow style"], out="my-style")
images = stylecraft.sample(muse, ["a blue star in neon glow style"], adapter="my-style", out="samples")
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

import torch
from PIL import Image

from .adapters import AdaptedTransformer
from .compose import COMPOSE_ROUTES, stack_adapters
from .errors import StylecraftError
from .io import load_image, make_grid, output_dir, save_png, to_pil_images, write_json
from .muse import AMUSED_SAMPLING, MuseModel, load_muse
from .sampling import SamplingConfig, config_dict, sample_tokens
from .training import TrainConfig, default_recipe, load_recipe, train_adapter
from .validation import FLAGS, SAMPLING_CONFIG, check_device, check_fields

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def load(model: str | Path | None = None, device: str = "cpu", dtype: str | torch.dtype = "float32") -> MuseModel:
    """Load a Muse model: None/'shapes' (built-in shapes world), a built-in random architecture, a folder, a hub id."""
    check_device(device)  # e.g. cuda on a machine without it: one line, not torch's assertion
    return load_muse(model, device=device, dtype=DTYPES[dtype] if isinstance(dtype, str) else dtype)


def train(
    muse: MuseModel,
    images: list[str | Path | Image.Image],
    prompts: list[str],
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> AdaptedTransformer:
    """Train an adapter on image(s) + prompt(s) and write it to ``out``; ``config`` defaults to StyleDrop's Round 1
    recipe for ``muse`` (the paper's, or the shapes model's own: ``training.default_recipe``).

    A LoRA adapter lives in ``muse``'s own layers, under a peft name of its own (so a later one leaves it be), for as
    long as the returned ``AdaptedTransformer`` lives (or until its ``remove_adapter``); the folder ``out`` keeps it.
    The paper's adapter keeps its weights outside ``muse``; a full fine-tune changes ``muse`` itself (see
    ``sample``)."""
    loaded = [img if isinstance(img, Image.Image) else load_image(img, muse.resolution) for img in images]
    loaded = [
        img.convert("RGB").resize((muse.resolution,) * 2) if img.size != (muse.resolution,) * 2 else img
        for img in loaded
    ]
    return train_adapter(
        muse,
        loaded,
        list(prompts),
        config or load_recipe(default_recipe(muse.name)),
        out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )


def content_prompt(prompt: str, style_descriptor: str | None = None) -> str:
    """The prompt without its style ("A cat in watercolor style" -> "A cat"), the c of StyleDrop Eq. 5-6."""
    if style_descriptor:
        pattern = rf"\s*\b(in\s+(the\s+)?)?{re.escape(style_descriptor)}(\s+style)?"
    else:
        pattern = r"\s+in\s+(the\s+)?[\w\s,'-]+?\s+style\b"
    stripped = re.sub(pattern, "", prompt, count=1, flags=re.IGNORECASE).strip()
    if stripped == prompt.strip() or not stripped:
        raise StylecraftError(
            f"could not remove the style from prompt {prompt!r}; pass --style-descriptor with the exact phrase"
        )
    return stripped


def sample(
    muse: MuseModel,
    prompts: list[str],
    *,
    adapter: str | Path | None = None,
    style_adapter: str | Path | None = None,
    content_adapter: str | Path | None = None,
    style_descriptor: str | None = None,
    compose: str = "stack",
    config: SamplingConfig | None = None,
    num_images: int = 1,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Image.Image]:
    """Generate ``num_images`` images per prompt; with ``out`` write NNN.png, grid.png and run.json there.

    ``adapter``: StyleDrop guidance (Eq. 4); a full fine-tune instead loads its weights into ``muse`` itself (it
    has no base left to guide against), so later calls on the same ``muse`` sample the fine-tune: load a fresh base
    for them. ``style_adapter`` + ``content_adapter``: ``compose`` "stack" puts both in one forward on the prompt
    (``compose.stack_adapters``; StyleDrop guidance, Eq. 4, against the base), "mix" mixes them by Eq. 5-6, where the
    content adapter sees the prompt without ``style_descriptor``. Images come in AmusedPipeline's order
    (prompts repeated), and ``seed`` seeds one ``torch.Generator('cpu')`` for the whole call.
    """
    config = config or SamplingConfig(guidance_scale=muse.sampling_defaults["guidance_scale"])
    check_fields(vars(config), SAMPLING_CONFIG)  # finite guidance and temperatures: NaN would draw noise
    FLAGS["num_images"]("num_images", num_images)  # capped: all images are decoded as one batch
    FLAGS["seed"]("seed", seed)
    if compose not in COMPOSE_ROUTES:
        raise StylecraftError(f"unknown --compose {compose!r}; use one of {', '.join(COMPOSE_ROUTES)}")
    model = None
    names: dict = {}
    if adapter is not None or style_adapter is not None or content_adapter is not None:
        model = AdaptedTransformer(muse)
        for role, folder in (
            ("adapter", adapter),
            ("style_adapter", style_adapter),
            ("content_adapter", content_adapter),
        ):
            if folder is not None:
                names[role] = model.load_adapter(folder, name=role)
        if adapter is not None and model.is_full(names["adapter"]):
            model, names = None, {}  # fine-tuned weights are now the transformer's: plain CFG (Eq. 1)
        elif style_adapter is not None and content_adapter is not None and compose == "stack":
            names = {"adapter": stack_adapters(model, {names["style_adapter"]: 1.0, names["content_adapter"]: 1.0})}
        if "adapter" in names and config.lambda_a is None:
            config.lambda_a = muse.sampling_defaults["lambda_a"]
    content_prompts = None
    if "style_adapter" in names or "content_adapter" in names:  # Eq. 5-6 (a lone one is refused when sampling)
        content_prompts = [content_prompt(p, style_descriptor) for p in prompts]

    with ExitStack() as stack:
        # --out is checked and locked before any work: a second process, or a folder stylecraft may not replace,
        # is refused at once instead of after every image is drawn
        folder = stack.enter_context(output_dir(out, overwrite=overwrite)) if out is not None else None
        generator = torch.Generator("cpu").manual_seed(seed)
        tokens = sample_tokens(
            muse,
            list(prompts),
            config,
            model=model,
            content_prompts=content_prompts,
            num_images_per_prompt=num_images,
            generator=generator,
            progress=progress,
            **names,
        )
        images = to_pil_images(muse.decode_tokens(tokens))
        if folder is not None:
            settings = {
                "model": muse.name,
                "prompts": list(prompts),
                "num_images": num_images,
                "seed": seed,
                "adapter": str(adapter) if adapter else None,
                "style_adapter": str(style_adapter) if style_adapter else None,
                "content_adapter": str(content_adapter) if content_adapter else None,
                "compose": compose if style_adapter or content_adapter else None,
                "content_prompts": content_prompts,
                "sampling": config_dict(config),
            }
            for i, image in enumerate(images):
                prompt = prompts[i % len(prompts)]
                save_png(image, folder / f"{i:03d}.png", {"prompt": prompt, "seed": seed, "index": i, **settings})
            # grid rows = prompts, columns = images of that prompt
            by_prompt = [images[j * len(prompts) + p] for p in range(len(prompts)) for j in range(num_images)]
            save_png(make_grid(by_prompt, columns=num_images), folder / "grid.png", settings)
            write_json(folder / "run.json", settings)
    return images


# ---- command line runners ------------------------------------------------------------------------------------
def _sampling_config(args, muse: MuseModel | None = None) -> SamplingConfig:
    """The command's settings; --guidance and --lambda-a (with an adapter) fall back to the model's own defaults
    (``MuseModel.sampling_defaults``; aMUSEd's before the model is loaded)."""
    defaults = muse.sampling_defaults if muse is not None else AMUSED_SAMPLING
    lambda_a = args.lambda_a
    if lambda_a is None and getattr(args, "adapter", None):
        lambda_a = defaults["lambda_a"]
    return SamplingConfig(
        steps=args.steps,
        guidance_scale=defaults["guidance_scale"] if args.guidance is None else args.guidance,
        lambda_a=lambda_a,
        lambda_b=args.lambda_b,
        temperature=list(args.temperature),
        negative_prompt=args.negative_prompt or "",
        gamma=getattr(args, "gamma", 0.5),
        gamma_end=getattr(args, "gamma_end", None),
    )


def run_sample_cli(args) -> int:
    config = _sampling_config(args)  # validate settings before loading anything
    if (args.style_adapter is None) != (args.content_adapter is None):
        raise StylecraftError("--style-adapter and --content-adapter go together (StyleDrop Eq. 5-6)")
    if args.adapter and args.style_adapter:
        raise StylecraftError("use either --adapter or --style-adapter/--content-adapter, not both")
    muse = load(args.model, args.device, args.dtype)
    config = _sampling_config(args, muse)
    sample(
        muse,
        args.prompt,
        adapter=args.adapter,
        style_adapter=args.style_adapter,
        content_adapter=args.content_adapter,
        style_descriptor=args.style_descriptor,
        compose=args.compose,
        config=config,
        num_images=args.num_images,
        seed=args.seed,
        out=args.out,
        overwrite=args.overwrite,
    )
    print(Path(args.out) / "grid.png")
    return 0


def run_train_cli(args) -> int:
    if not args.content and (args.class_prompt, args.num_class_images, args.lambda_prior) != (None, None, None):
        raise StylecraftError("--class-prompt, --num-class-images and --lambda-prior go with --content")
    kind = "dreambooth" if args.content else args.adapter if args.adapter in ("lora", "full") else "round1"
    config = load_recipe(
        args.recipe or default_recipe(args.model, kind),
        adapter_type=args.adapter,
        rank=args.rank,
        shared=args.shared,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        shift=args.shift,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        mixed_precision=None if args.mixed_precision == "no" else args.mixed_precision,
        class_prompt=args.class_prompt,
        num_class_images=args.num_class_images,
        lambda_prior=args.lambda_prior,
    )
    if args.class_prompt is not None and config.lambda_prior == 0:
        raise StylecraftError(
            "--class-prompt is for the prior term, which is off (lambda_prior 0); add --lambda-prior 1"
        )
    muse = load(args.model, args.device, args.dtype)
    images = [load_image(path, muse.resolution) for path in args.image]
    if args.content:
        from .dreambooth import train_dreambooth

        train_dreambooth(muse, images, args.prompt, config, args.out, resume=args.resume, overwrite=args.overwrite)
    else:
        train(muse, images, args.prompt, args.out, config, resume=args.resume, overwrite=args.overwrite)
    print(args.out)
    return 0
