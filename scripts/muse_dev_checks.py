"""Development checks of the shapes world's Muse-mini, on seeds kept apart from every evaluation seed.

The checks behind the sampling choices in docs/world.md and the model card (guidance 2) and behind the closing
notes' diagnoses. Each prints oracle accuracies; none writes anything.

    python scripts/muse_dev_checks.py guidance                 # base model, CFG 1-5 (seed 777)
    python scripts/muse_dev_checks.py by-size                  # shape accuracy, small vs large, vs the VQ (778)
    python scripts/muse_dev_checks.py temperature              # sampler temperature and step count (778)
    python scripts/muse_dev_checks.py vq-latents               # VQ shape per style, with and without the codebook
                                                               # (--vq FOLDER: another VQ), colour and style (778)
    python scripts/muse_dev_checks.py vq-agreement --vqs F..   # share of tokens other VQs give as the model's (778)
    python scripts/muse_dev_checks.py compare --models A B     # base models side by side, 384 prompts (779)
    python scripts/muse_dev_checks.py by-style                 # base model per seen style, 64 prompts each (779)
    python scripts/muse_dev_checks.py adapters                 # Round-1 adapters on the held-out styles (777),
                                                               # --guidance G.. --lambda-a L.. (default 2; 0.5 1 2)
                                                               # --sampling-steps N (default 12)
    python scripts/muse_dev_checks.py adapters --recipe FILE   # ... with another adapter recipe
                                                               # (--images-per-prompt N, default 2)
    python scripts/muse_dev_checks.py glyph                    # content adapter alone, its own prompt (777)
    python scripts/muse_dev_checks.py mix                      # Eq. 5-6 over γ, content recipe shapes-round2 (777);
                                                               # --gamma G.., --content-recipe R, --content-styles
                                                               # S.. (glyph renders in these seen styles;
                                                               # --plain-captions: captions never name them;
                                                               # --full-content-prompt: the content adapter
                                                               # reads the style's name too),
                                                               # --recipe R (the style adapter's; shapes-round1)
    python scripts/muse_dev_checks.py mix-steps                # two adapters with γ changing over the steps, and
                                                               # the content adapter as a guidance term over
                                                               # --lambda-c (not Eq. 5-6 as written) (777)
    python scripts/muse_dev_checks.py stack                    # style and content adapter summed in one forward
                                                               # (not Eq. 5-6), over --guidance, --lambda-a (777)
    python scripts/muse_dev_checks.py feedback --lambda-a 1    # Round 1 vs Round 2 (CLIP picks), candidates
                                                               # drawn at λA 1; --round2-recipe R,
                                                               # --per-prompt K (default 4) (777);
                                                               # --encode-pngs: Round 2 without the kept tokens;
                                                               # --rounds N: chain Round 3.. the same way
    python scripts/muse_dev_checks.py round-trip               # Round 2's picks as drawn vs through the VQ again
                                                               # (--feedback-dir, default runs/eval-feedback)
    python scripts/muse_dev_checks.py round2 --round2-steps 300 900   # Round 2 again on a feedback folder's picks
                                                               # (--feedback-dir, --picks, --round2-recipe,
                                                               # --images-per-prompt, --all-repeats; --pooled:
                                                               # picks from all repeats' candidates) (777)
    python scripts/muse_dev_checks.py picks --clip FOLDER      # CLIP feedback's picks with another CLIP, read by
                                                               # the oracles (--feedback-dir)
    python scripts/muse_dev_checks.py full-parts               # full fine-tuning of one part of the transformer
                                                               # at a time: which part carries the texture (777)

``--model`` takes any Muse folder (default: the shipped one).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

DEV_SEED = 777  # never EVAL_SEED (evaluation.py, world/pretrain.py)


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 3) for k, v in metrics.items() if k != "num_images" and not k.endswith("_se")}


def _mean(rows: list[dict]) -> dict:
    """The mean of each metric over ``rows`` (one dict of metrics per style)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "num_images" and not k.endswith("_se")}


def guidance(model, args) -> None:
    from stylecraft.sampling import SamplingConfig, sample_images
    from stylecraft.world import SEEN_STYLES, sample_scenes
    from stylecraft.world.oracles import load_oracles, oracle_accuracy

    scenes = sample_scenes(64, np.random.default_rng(DEV_SEED), SEEN_STYLES)
    for g in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0):
        config = SamplingConfig(steps=12, guidance_scale=g)
        images = sample_images(model, scenes.captions(), config, generator=torch.Generator().manual_seed(5))
        print("guidance", g, _rounded(oracle_accuracy(load_oracles(), images, scenes.labels())), flush=True)


def _shape_by_size(model, config, oracles):
    from stylecraft.sampling import sample_images
    from stylecraft.world import SEEN_STYLES, sample_scenes

    scenes = sample_scenes(128, np.random.default_rng(DEV_SEED + 1), SEEN_STYLES)
    labels = scenes.labels()
    images = sample_images(model, scenes.captions(), config, generator=torch.Generator().manual_seed(6))
    print(f"steps {config.steps} temperature {config.temperature}", _by_size(oracles, images, labels))
    return scenes, labels


def _by_size(oracles, images, labels: dict) -> dict:
    """Oracle shape accuracy overall, on small and on large shapes, and colour and style accuracy (rounded)."""
    predicted, small = oracles.predict(images), labels["size"] == 0
    right = predicted["shape"] == labels["shape"]
    line = {"shape": right.mean(), "small": right[small].mean(), "large": right[~small].mean()}
    line.update({k: (predicted[k] == labels[k]).mean() for k in ("colour", "style")})
    return _rounded({k: float(v) for k, v in line.items()})


def by_size(model, args) -> None:
    from stylecraft.sampling import SamplingConfig
    from stylecraft.world import render
    from stylecraft.world.oracles import load_oracles
    from stylecraft.world.pretrain import to_tensor

    oracles = load_oracles()
    scenes, labels = _shape_by_size(model, SamplingConfig(steps=12, guidance_scale=2.0), oracles)
    with torch.no_grad():
        reconstructions = model.decode_tokens(model.encode_images(to_tensor(render(scenes, DEV_SEED + 1))))
    right = oracles.predict(reconstructions)["shape"] == labels["shape"]
    small = labels["size"] == 0
    print("VQ reconstructions", _rounded({"small": float(right[small].mean()), "large": float(right[~small].mean())}))


def vq_latents(model, args) -> None:
    """Oracle shape accuracy per style on 64 renders each (seed 778 000 + style index) through the VQ, and through
    its decoder without the codebook (the encoder's latents as they are): what quantization alone loses."""
    from stylecraft.world import STYLES, render_batch
    from stylecraft.world.oracles import load_oracles
    from stylecraft.world.pretrain import reconstruct, to_tensor

    oracles, rows, others = load_oracles(), [], []
    vq = model.vqvae
    if args.vq:
        from stylecraft.world.vq import WorldVQModel

        vq = WorldVQModel.from_pretrained(args.vq, local_files_only=True).eval()
    for k, style in enumerate(STYLES):
        images, scenes = render_batch(64, (DEV_SEED + 1) * 1000 + k, styles=(style,))
        with torch.no_grad():
            unquantized = vq.decoder(vq.post_quant_conv(vq.encode(to_tensor(images)).latents)).clamp(0, 1)
        truth, quantized = scenes.labels(), oracles.predict(reconstruct(vq, images))
        rows.append(
            [
                (quantized["shape"] == truth["shape"]).mean(),
                (oracles.predict(unquantized)["shape"] == truth["shape"]).mean(),
            ]
        )
        others.append([(quantized[a] == truth[a]).mean() for a in ("colour", "style")])
        print(f"{style:20s} quantized {rows[-1][0]:.3f} unquantized {rows[-1][1]:.3f}", flush=True)
    print("mean", f"quantized {np.mean([r[0] for r in rows]):.3f} unquantized {np.mean([r[1] for r in rows]):.3f}")
    print(
        "quantized colour", f"{np.mean([r[0] for r in others]):.3f}", "style", f"{np.mean([r[1] for r in others]):.3f}"
    )


def vq_agreement(model, args) -> None:
    """Share of tokens that each VQ in ``--vqs`` gives as the model's own VQ does, on 64 renders per style (seed
    778 000 + style index): how much of the code a Muse trained on the model's tokens still reads the same way."""
    from dataclasses import replace

    from stylecraft.world import STYLES, render_batch
    from stylecraft.world.pretrain import to_tensor
    from stylecraft.world.vq import WorldVQModel

    for folder in args.vqs or []:
        other = replace(model, vqvae=WorldVQModel.from_pretrained(folder, local_files_only=True).eval())
        shares = []
        for k, style in enumerate(STYLES):
            x = to_tensor(render_batch(64, (DEV_SEED + 1) * 1000 + k, styles=(style,))[0])
            with torch.no_grad():
                ours, theirs = model.encode_images(x), other.encode_images(x)
            shares.append(float((ours == theirs).float().mean()))
            print(f"{folder} {style:20s} {shares[-1]:.3f}", flush=True)
        print(f"{folder} mean {np.mean(shares):.3f}", flush=True)


def temperature(model, args) -> None:
    from stylecraft.sampling import SamplingConfig
    from stylecraft.world.oracles import load_oracles

    oracles = load_oracles()
    for start, steps in ((2.0, 12), (1.0, 12), (4.0, 12), (0.5, 12), (2.0, 24), (1.0, 24)):
        _shape_by_size(model, SamplingConfig(steps=steps, guidance_scale=2.0, temperature=[start, 0.0]), oracles)


def compare(model, args) -> None:
    """Base models side by side on 384 prompts per style group (seed 779): shape (small, large), colour, style."""
    from stylecraft.api import load
    from stylecraft.sampling import SamplingConfig, sample_images
    from stylecraft.world import HELD_OUT_STYLES, SEEN_STYLES, sample_scenes
    from stylecraft.world.oracles import load_oracles

    oracles, seed, n = load_oracles(), DEV_SEED + 2, 384
    for group, styles in (("seen", SEEN_STYLES), ("held out", HELD_OUT_STYLES)):
        scenes = sample_scenes(n, np.random.default_rng(seed), styles)
        labels, captions = scenes.labels(), scenes.captions()
        for path in args.models or ["shapes"]:
            muse, config = load(path), SamplingConfig(steps=12, guidance_scale=2.0)
            images = torch.cat(
                [
                    sample_images(
                        muse, captions[i : i + 128], config, generator=torch.Generator().manual_seed(seed + i)
                    )
                    for i in range(0, n, 128)
                ]
            )
            print(group, path, _by_size(oracles, images, labels), flush=True)


def by_style(model, args) -> None:
    """The base model per seen style, 64 prompts each (seed 779): which styles' shapes it draws worst."""
    from stylecraft.sampling import SamplingConfig, sample_images
    from stylecraft.world import SEEN_STYLES, sample_scenes
    from stylecraft.world.oracles import load_oracles

    oracles, seed, config = load_oracles(), DEV_SEED + 2, SamplingConfig(steps=12, guidance_scale=2.0)
    for style in SEEN_STYLES:
        scenes = sample_scenes(64, np.random.default_rng(seed), (style,))
        generator = torch.Generator().manual_seed(seed)
        images = sample_images(model, scenes.captions(), config, generator=generator, progress=False)
        print(style, _by_size(oracles, images, scenes.labels()), flush=True)


def adapters(model, args) -> None:
    from stylecraft.api import load
    from stylecraft.evaluation import generate, make_task, measure
    from stylecraft.sampling import SamplingConfig
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world import HELD_OUT_STYLES
    from stylecraft.world.oracles import load_oracles

    oracles = load_oracles()
    settings = [(g, lambda_a, t) for g in args.guidance for lambda_a in args.lambda_a for t in args.temperature]
    results: dict[tuple, list[dict]] = {s: [] for s in settings}
    for style in HELD_OUT_STYLES:
        task, muse = make_task(style), load(args.model)
        adapted = train_adapter(
            muse,
            [task.reference],
            [task.reference_prompt],
            load_recipe(args.recipe),
            tempfile.mkdtemp(),
            progress=False,
        )
        for g, lambda_a, t in settings:
            config = SamplingConfig(
                steps=args.sampling_steps, guidance_scale=g, lambda_a=lambda_a, temperature=[t, 0.0]
            )
            n = args.images_per_prompt or 2
            images, prompts = generate(muse, task.prompts, n, config, model=adapted, adapter="adapter", seed=args.seed)
            metrics = measure(images, prompts, task, oracles)
            results[(g, lambda_a, t)].append(metrics)
            print(style, f"guidance {g} λA {lambda_a} temperature {t}", _rounded(metrics), flush=True)
    for (g, lambda_a, t), rows in results.items():
        print("mean", f"guidance {g} λA {lambda_a} temperature {t}", _rounded(_mean(rows)), flush=True)


# Parts of the transformer a full fine-tune may change in `full-parts` (top-level module names; None: all of it)
PARTS = {
    "all": None,
    "transformer layers": ("transformer_layers",),
    "up block and head": ("up_block", "project_from_hidden", "mlm_layer"),
    "embedding and down block": ("embed", "down_block", "project_to_hidden"),
}


def full_parts(model, args) -> None:
    """Full fine-tuning (recipe shapes-full) of one part of the transformer at a time, on pixel art and polka dot
    (seed ``--seed``, 4 images per prompt, plain CFG): where does the texture the adapters miss get decided?"""
    from stylecraft import adapters
    from stylecraft.api import load
    from stylecraft.evaluation import GUIDANCE, generate, make_task, measure
    from stylecraft.sampling import SamplingConfig
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world.oracles import load_oracles

    every = adapters.AdaptedTransformer.adapter_parameters
    oracles, config = load_oracles(), SamplingConfig(steps=12, guidance_scale=GUIDANCE)
    for label, prefixes in PARTS.items():

        def some(self, name, prefixes=prefixes):
            if not (self.is_full(name) and prefixes):
                return every(self, name)
            return [p for n, p in self.transformer.named_parameters() if n.split(".")[0] in prefixes]

        adapters.AdaptedTransformer.adapter_parameters = some  # only these parameters train; the rest stay the base
        for style in ("pixel art", "polka dot"):
            muse, task = load(args.model), make_task(style)
            folder = tempfile.mkdtemp()
            train_adapter(
                muse, [task.reference], [task.reference_prompt], load_recipe("shapes-full"), folder, progress=False
            )
            images, prompts = generate(muse, task.prompts, 4, config, seed=args.seed)  # muse is the fine-tune now
            print(label, style, _rounded(measure(images, prompts, task, oracles)), flush=True)
    adapters.AdaptedTransformer.adapter_parameters = every


def _glyph_adapter(args, recipe: str, styles: tuple[str, ...] = ("flat color",)) -> str:
    """A content adapter on GLYPH_RENDERS renders of the glyph, cycling through ``styles`` (captions name the
    style unless it is the default flat colour only)."""
    from PIL import Image

    from stylecraft.api import load
    from stylecraft.evaluation import GLYPH_COLOUR, GLYPH_RENDERS
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world import glyph_caption, render_glyphs

    renders = {s: render_glyphs(GLYPH_RENDERS, 0, GLYPH_COLOUR, "large", (s,))[0] for s in set(styles)}
    chosen = [styles[i % len(styles)] for i in range(GLYPH_RENDERS)]
    images = [Image.fromarray(renders[style][i]) for i, style in enumerate(chosen)]
    named = styles != ("flat color",) and not args.plain_captions
    captions = [glyph_caption(GLYPH_COLOUR, style=s if named else None) for s in chosen]
    folder = tempfile.mkdtemp()
    train_adapter(load(args.model), images, captions, load_recipe(recipe), folder, progress=False)
    return folder


def glyph(model, args) -> None:
    from stylecraft.api import sample
    from stylecraft.evaluation import GLYPH_COLOUR, measure_glyph
    from stylecraft.sampling import SamplingConfig
    from stylecraft.world import glyph_caption
    from stylecraft.world.oracles import load_glyph_oracle, load_oracles

    for recipe in ("shapes-round1", "shapes-round2", "shapes-full"):
        folder = _glyph_adapter(args, recipe)
        for g in (2.0, 4.0):
            config = SamplingConfig(steps=12, guidance_scale=g, lambda_a=1.0)
            images = sample(
                model,
                [glyph_caption(GLYPH_COLOUR)],
                config=config,
                adapter=folder,
                num_images=16,
                seed=DEV_SEED,
                progress=False,
            )
            print(
                recipe,
                "guidance",
                g,
                _rounded(measure_glyph(images, "flat color", load_oracles(), load_glyph_oracle())),
                flush=True,
            )


def mix(model, args) -> None:
    from stylecraft.api import load, sample
    from stylecraft.evaluation import GLYPH_COLOUR, make_task, measure_glyph
    from stylecraft.sampling import SamplingConfig
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world import glyph_caption
    from stylecraft.world.oracles import load_glyph_oracle, load_oracles

    style = args.style
    task, style_folder = make_task(style), tempfile.mkdtemp()
    train_adapter(
        load(args.model),
        [task.reference],
        [task.reference_prompt],
        load_recipe(args.recipe),
        style_folder,
        progress=False,
    )
    if args.content_shape:  # a shape the base model knows, in place of the glyph: does Eq. 5-6 blend then?
        _mix_known_shape(model, args, style, style_folder)
        return
    content_folder = _glyph_adapter(args, args.content_recipe, tuple(args.content_styles))
    prompt = glyph_caption(GLYPH_COLOUR, style=style)
    for g in args.guidance:
        for gamma in args.gamma:
            config = SamplingConfig(steps=12, guidance_scale=g, gamma=gamma)
            if args.full_content_prompt:  # not Eq. 5-6 as written: the content adapter also reads the style's name
                images = _mixed_with_prompt(model, prompt, g, gamma, style_folder, content_folder, args.seed)
            else:
                images = sample(
                    model,
                    [prompt],
                    config=config,
                    style_adapter=style_folder,
                    content_adapter=content_folder,
                    style_descriptor=style,
                    num_images=16,
                    seed=args.seed,
                    progress=False,
                )
            print(
                f"guidance {g} γ {gamma}",
                _rounded(measure_glyph(images, style, load_oracles(), load_glyph_oracle())),
                flush=True,
            )


# γ over the decoding steps for `mix-steps`: name -> γ at the fraction f of the steps done (0 first, 1 last)
GAMMA_SCHEDULES = {
    "γ 0.5 throughout (Eq. 5-6)": lambda f: 0.5,
    "γ 0.9 -> 0.1 (content early)": lambda f: 0.9 - 0.8 * f,
    "γ 0.1 -> 0.9 (style early)": lambda f: 0.1 + 0.8 * f,
    "γ 1 for the first quarter, then 0.2": lambda f: 1.0 if f < 0.25 else 0.2,
    "γ 1 for the first quarter, then 0": lambda f: 1.0 if f < 0.25 else 0.0,
    "γ 0 for the first quarter, then 0.8": lambda f: 0.0 if f < 0.25 else 0.8,
    "γ 1 for the first half, then 0.2": lambda f: 1.0 if f < 0.5 else 0.2,
}


@torch.no_grad()
def _two_adapter_images(muse, model, groups, combine, n: int, seed: int, steps: int = 12):
    """``n`` images decoded like ``sampling.sample_tokens`` but with the guidance terms ``groups`` ((prompt, adapter
    name or None) pairs, one forward) combined by ``combine(fraction of steps done, logits of each group)``."""
    from stylecraft.io import to_pil_images
    from stylecraft.sampling import _condition, _denoise

    texts = list(dict.fromkeys(t for t, _ in groups))
    pooled_all, hidden_all = muse.encode_prompts(texts)
    rows_of = [texts.index(t) for t, _ in groups]
    pooled = torch.cat([pooled_all[[i]].repeat(n, 1) for i in rows_of])
    hidden = torch.cat([hidden_all[[i]].repeat(n, 1, 1) for i in rows_of])
    rows = [name for _, name in groups for _ in range(n)]
    micro = muse.micro_conds(len(rows), muse.resolution, muse.resolution)
    condition = _condition(muse, hidden, pooled, micro)
    side = muse.resolution // muse.vae_scale_factor
    latents = torch.full((n, side, side), muse.mask_token_id, dtype=torch.long, device=muse.device)
    muse.scheduler.set_timesteps(steps, (2.0, 0.0), muse.device)
    generator = torch.Generator().manual_seed(seed)
    for k, timestep in enumerate(muse.scheduler.timesteps):
        with model.route(rows):
            logits = _denoise(muse, torch.cat([latents] * len(groups)), condition)
        mixed = combine(k / max(steps - 1, 1), logits.chunk(len(groups)))
        latents = muse.scheduler.step(model_output=mixed, timestep=timestep, sample=latents, generator=generator)
        latents = latents.prev_sample
    return to_pil_images(muse.decode_tokens(latents))


def _mixed_with_prompt(muse, prompt: str, g: float, gamma: float, style_folder, content_folder, seed: int):
    """16 images of Eq. 5-6 where both adapters read ``prompt`` (the style's name included)."""
    from stylecraft.adapters import AdaptedTransformer

    both = AdaptedTransformer(muse)
    both.load_adapter(style_folder, name="style")
    both.load_adapter(content_folder, name="content")
    groups = [(prompt, "style"), ("", "style"), (prompt, "content"), ("", "content")]
    return _two_adapter_images(muse, both, groups, partial(_eq5_6, g=g, gamma_at=lambda f: gamma), 16, seed)


def _eq5_6(f: float, parts, g: float, gamma_at) -> torch.Tensor:
    """StyleDrop Eq. 5-6 on the logits of (style adapter on t, on n, content adapter on c, on n), γ = gamma_at(f)."""
    style_t, style_n, content_c, content_n = parts
    gamma = gamma_at(f)
    return (1 - gamma) * (style_n + g * (style_t - style_n)) + gamma * (content_n + g * (content_c - content_n))


def mix_steps(model, args) -> None:
    """Two adapters beyond a fixed γ (not Eq. 5-6 as the paper writes it): γ that changes over the decoding steps
    (GAMMA_SCHEDULES), and the content adapter added as a guidance term: the style adapter's Eq. 4 (λA
    ``evaluation.LAMBDA_A``) + λC (content adapter - base, both on the content prompt), over ``--lambda-c``.
    Adapters as in ``eval-two-adapters``; 16 images each, seed ``--seed``; the glyph detector, style and colour as
    in ``mix``."""
    from stylecraft.adapters import AdaptedTransformer
    from stylecraft.api import load
    from stylecraft.evaluation import GLYPH_COLOUR, GUIDANCE, LAMBDA_A, make_task, measure_glyph
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world import glyph_caption
    from stylecraft.world.oracles import load_glyph_oracle, load_oracles

    style, style_folder, content = args.style, tempfile.mkdtemp(), glyph_caption(GLYPH_COLOUR)
    content_folder = _glyph_adapter(args, "shapes-round1-unshifted", tuple(args.content_styles))
    task = make_task(style)
    recipe = load_recipe(args.recipe)
    train_adapter(load(args.model), [task.reference], [task.reference_prompt], recipe, style_folder, progress=False)
    both = AdaptedTransformer(model)
    both.load_adapter(style_folder, name="style")
    both.load_adapter(content_folder, name="content")
    oracles, detector, prompt, g = (
        load_oracles(),
        load_glyph_oracle(),
        glyph_caption(GLYPH_COLOUR, style=style),
        GUIDANCE,
    )

    def report(name: str, images) -> None:
        print(name, _rounded(measure_glyph(images, style, oracles, detector)), flush=True)

    mixed_groups = [(prompt, "style"), ("", "style"), (content, "content"), ("", "content")]
    for name, gamma_at in GAMMA_SCHEDULES.items():
        eq5_6 = partial(_eq5_6, g=g, gamma_at=gamma_at)
        report(name, _two_adapter_images(model, both, mixed_groups, eq5_6, 16, args.seed))
    guided_groups = [(prompt, "style"), (prompt, None), ("", None), (content, "content"), (content, None)]
    for lambda_c in args.lambda_c:

        def guided(f, parts, lambda_c=lambda_c):
            style_t, base_t, base_n, content_c, base_c = parts
            eq4 = style_t + LAMBDA_A * (style_t - base_t) + (g - 1) * (base_t - base_n)
            return eq4 + lambda_c * (content_c - base_c)

        report(
            f"Eq. 4 + λC {lambda_c} (content adapter - base)",
            _two_adapter_images(model, both, guided_groups, guided, 16, args.seed),
        )


def stack(model, args) -> None:
    """Not Eq. 5-6: the style and the content adapter both in one forward (their deltas summed at every site),
    guided as one adapter with Eq. 4 against the base, over --guidance and --lambda-a. The glyph detector, style
    and colour as in ``mix``."""
    from stylecraft import adapters
    from stylecraft.api import load
    from stylecraft.evaluation import GLYPH_COLOUR, make_task, measure_glyph
    from stylecraft.sampling import SamplingConfig, sample_tokens
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world import glyph_caption
    from stylecraft.world.oracles import load_glyph_oracle, load_oracles

    style, style_folder = args.style, tempfile.mkdtemp()
    task = make_task(style)
    muse = load(args.model)
    train_adapter(
        muse, [task.reference], [task.reference_prompt], load_recipe(args.recipe), style_folder, progress=False
    )
    content_folder = _glyph_adapter(args, args.content_recipe, tuple(args.content_styles))
    both = adapters.AdaptedTransformer(muse)
    names = (both.load_adapter(style_folder, name="style"), both.load_adapter(content_folder, name="content"))

    routed = both._add_routed  # the wrapper's own routing, run once per adapter of a "style+content" row

    def add_routed(output, delta, applies=lambda adapter: True):
        rows = both._rows
        if not rows:
            return routed(output, delta, applies)
        try:
            for name in names:
                both._rows = [name if r == "style+content" else r for r in rows]
                output = routed(output, delta, applies)
        finally:
            both._rows = rows
        return output

    both.configs["style+content"] = both.configs["style"]  # so that route() knows the name
    both._add_routed = add_routed
    oracles, detector = load_oracles(), load_glyph_oracle()
    for g, lambda_a in itertools.product(args.guidance, args.lambda_a):
        config = SamplingConfig(steps=12, guidance_scale=g, lambda_a=lambda_a)
        tokens = sample_tokens(
            muse,
            [glyph_caption(GLYPH_COLOUR, style=style)],
            config,
            model=both,
            adapter="style+content",
            num_images_per_prompt=16,
            generator=torch.Generator().manual_seed(args.seed),
            progress=False,
        )
        images = [_to_pil(image) for image in muse.decode_tokens(tokens)]
        print(f"guidance {g} λA {lambda_a}", _rounded(measure_glyph(images, style, oracles, detector)), flush=True)


def _to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _mix_known_shape(model, args, style: str, style_folder: str) -> None:
    """``mix`` with a content adapter on GLYPH_RENDERS flat renders of a shape the base model knows ("a large
    orange star"): the rate of images the oracles read as that shape and as ``style``, for the style adapter alone
    (Eq. 4) and for both adapters (Eq. 5-6) over ``--gamma``."""
    from PIL import Image

    from stylecraft.api import load, sample
    from stylecraft.evaluation import GLYPH_COLOUR, GLYPH_RENDERS, LAMBDA_A
    from stylecraft.sampling import SamplingConfig
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world import SHAPES, STYLES, caption, render_prompts
    from stylecraft.world.oracles import load_oracles

    oracles, content = load_oracles(), caption(args.content_shape, GLYPH_COLOUR, "large")
    images = [Image.fromarray(a) for a in render_prompts([content] * GLYPH_RENDERS, seed=0)]
    content_folder = tempfile.mkdtemp()
    train_adapter(
        load(args.model),
        images,
        [content] * GLYPH_RENDERS,
        load_recipe(args.content_recipe),
        content_folder,
        progress=False,
    )
    prompt = caption(args.content_shape, GLYPH_COLOUR, "large", style=style)
    runs = {"style adapter only (Eq. 4)": dict(adapter=style_folder)}
    runs.update(
        {
            f"γ {gamma}": dict(
                style_adapter=style_folder, content_adapter=content_folder, style_descriptor=style, gamma=gamma
            )
            for gamma in args.gamma
        }
    )
    for name, run in runs.items():
        config = SamplingConfig(steps=12, guidance_scale=args.guidance[0], gamma=run.pop("gamma", 0.5))
        config.lambda_a = LAMBDA_A if "adapter" in run else None
        drawn = sample(model, [prompt], config=config, num_images=16, seed=args.seed, progress=False, **run)
        predicted = oracles.predict(np.stack([np.asarray(im) for im in drawn]))
        shape = predicted["shape"] == SHAPES.index(args.content_shape)
        styled = predicted["style"] == STYLES.index(style)
        print(
            name, f"shape {shape.mean():.2f} style {styled.mean():.2f} both {(shape & styled).mean():.2f}", flush=True
        )


def feedback(model, args) -> None:
    """Round 1 vs Round 2 (CLIP picks of ``--per-prompt`` candidates per feedback prompt, drawn at ``--lambda-a``[0]);
    Round 2 trains with ``--round2-recipe``; both judged at the evaluation λA on the held-out styles' prompts (seed
    ``--seed``). ``--rounds N`` chains further rounds the same way (Round 3 from Round 2's candidates, ...)."""

    from stylecraft.evaluation import GUIDANCE, LAMBDA_A, generate, make_task, measure
    from stylecraft.feedback import SHAPES_WORLD_CONTENT, generate_candidates, select, train_round
    from stylecraft.sampling import SamplingConfig
    from stylecraft.training import load_recipe, train_adapter
    from stylecraft.world import HELD_OUT_STYLES
    from stylecraft.world.oracles import load_oracles

    oracles = load_oracles()
    rows: dict[str, list[dict]] = {f"Round {n}": [] for n in range(1, args.rounds + 1)}
    evaluation = SamplingConfig(steps=12, guidance_scale=GUIDANCE, lambda_a=LAMBDA_A)
    candidates = SamplingConfig(steps=12, guidance_scale=GUIDANCE, lambda_a=args.lambda_a[0])
    for style in HELD_OUT_STYLES:
        task, base = make_task(style), Path(tempfile.mkdtemp())
        adapted = train_adapter(
            model, [task.reference], [task.reference_prompt], load_recipe(args.recipe), base / "r1", progress=False
        )
        prompts = [f"{content} in {style} style" for content in SHAPES_WORLD_CONTENT]
        # Each round is judged before the next trains (needed before LoRA adapters got a peft name each)
        for n in range(1, args.rounds + 1):
            if n > 1:
                round_dir = base / f"round{n}"
                generate_candidates(
                    model,
                    base / f"r{n - 1}",
                    prompts,
                    round_dir,
                    style,
                    args.per_prompt,
                    config=candidates,
                    progress=False,
                )
                picks = select(round_dir, "clip")
                if args.encode_pngs:  # Round 2 as before it kept tokens: the picked PNGs are encoded again
                    shutil.rmtree(round_dir / "tokens")
                adapted = train_round(
                    model, round_dir, picks, recipe=args.round2_recipe, progress=False, adapter_dir=base / f"r{n}"
                )
            images, prompts_ = generate(
                model, task.prompts, 2, evaluation, model=adapted, adapter="adapter", seed=args.seed
            )
            rows[f"Round {n}"].append(measure(images, prompts_, task, oracles))
            print(style, f"Round {n}", _rounded(rows[f"Round {n}"][-1]), flush=True)
    for name, metrics in rows.items():
        print("mean", name, _rounded(_mean(metrics)), flush=True)


def round_trip(model, args) -> None:
    """How often each Round 2's picks in an eval-feedback folder (``--feedback-dir``) read as their style, as drawn
    and after encoding the PNG with the VQ again (what Round 2 trained on before it kept the tokens)."""
    import json

    from PIL import Image

    from stylecraft.world.oracles import ATTRIBUTES, load_oracles
    from stylecraft.world.pretrain import to_tensor

    oracles, folder = load_oracles(), Path(args.feedback_dir)
    results = json.loads((folder / "results.json").read_text())
    for style, block in results["styles"].items():
        target = ATTRIBUTES["style"].index(style)
        for method, picks in block["picks"].items():
            candidates = folder / style.replace(" ", "-") / "round2" / "candidates"
            drawn = np.stack([np.asarray(Image.open(candidates / file).convert("RGB")) for file in picks])
            with torch.no_grad():
                again = model.decode_tokens(model.encode_images(to_tensor(drawn.copy())))
            rates = [float((oracles.predict(x)["style"] == target).mean()) for x in (drawn, again)]
            print(style, method, f"picks {rates[0]:.3f}, after a VQ round trip {rates[1]:.3f}", flush=True)


def round2(model, args) -> None:
    """Round 2 trained again on the picks an eval-feedback folder (``--feedback-dir``) made, with
    ``--round2-recipe`` at each of ``--round2-steps``, judged on the held-out styles' prompts (seed ``--seed``): does
    Round 2 learn what its picks show (their oracle rates are in that folder's report)?"""
    import json

    from stylecraft.evaluation import GUIDANCE, LAMBDA_A, generate, make_task, measure, oracle_pick
    from stylecraft.feedback import SELECTIONS, select, train_round
    from stylecraft.sampling import SamplingConfig
    from stylecraft.world.oracles import load_oracles

    oracles, folder = load_oracles(), Path(args.feedback_dir)
    results = json.loads((folder / "results.json").read_text())
    config = SamplingConfig(steps=12, guidance_scale=GUIDANCE, lambda_a=LAMBDA_A)
    rows: dict[tuple, list[dict]] = {}
    for style, block in results["styles"].items():
        task = make_task(style)
        # --all-repeats: the candidates of every repeat (round2, round2-seed1, ...), not only the first;
        # --pooled: all of them in one round, K = the repeats' K summed, so picks are the best of more candidates
        round_dirs = sorted((folder / style.replace(" ", "-")).glob("round2*" if args.all_repeats else "round2"))
        if args.pooled:
            round_dirs = [_pooled_round(folder / style.replace(" ", "-"))]
        for round_dir, method in itertools.product([d for d in round_dirs if (d / "round.json").is_file()], args.picks):
            # "oracle", "clip", "random": these picks made now on the round's candidates (the folder's may predate a
            # change); any other name: the picks the folder's results saved for its first repeat
            if method == "oracle":
                picks = oracle_pick(round_dir, task, oracles)
            elif method in SELECTIONS:
                picks = select(round_dir, method)
            else:
                picks = block["picks"][method]
            for steps in args.round2_steps:
                adapted = train_round(
                    model,
                    round_dir,
                    picks,
                    recipe=args.round2_recipe,
                    steps=steps,
                    progress=False,
                    adapter_dir=Path(tempfile.mkdtemp()) / "r2",
                )
                n = args.images_per_prompt or 4
                images, prompts = generate(
                    model, task.prompts, n, config, model=adapted, adapter="adapter", seed=args.seed
                )
                rows.setdefault((method, steps), []).append(measure(images, prompts, task, oracles))
                print(style, round_dir.name, method, steps, _rounded(rows[(method, steps)][-1]), flush=True)
    for (method, steps), metrics in rows.items():
        print("mean", method, steps, _rounded(_mean(metrics)), flush=True)


def _pooled_round(style_dir: Path) -> Path:
    """One temporary round folder holding the candidates of every repeat in ``style_dir`` (round2, round2-seed1,
    ...): repeat r's candidate k of a prompt becomes candidate k + r * K, with its tokens and scores."""
    import json

    from stylecraft.feedback import candidate_name, tokens_path

    repeats = sorted(d for d in style_dir.glob("round2*") if (d / "round.json").is_file())
    pooled = Path(tempfile.mkdtemp()) / "round2-pooled"
    (pooled / "candidates").mkdir(parents=True)
    (pooled / "tokens").mkdir()
    settings = json.loads((repeats[0] / "round.json").read_text())
    per_prompt, scores = settings["per_prompt"], {}
    for r, repeat in enumerate(repeats):
        for file, score in json.loads((repeat / "scores.json").read_text()).items():
            k = int(Path(file).stem.split("_k")[1])  # candidate_name: pNNN_kNNN.png
            new = candidate_name(score["prompt_index"], k + r * per_prompt)
            shutil.copy(repeat / "candidates" / file, pooled / "candidates" / new)
            shutil.copy(tokens_path(repeat, file), tokens_path(pooled, new))
            scores[new] = score
    settings["per_prompt"] = per_prompt * len(repeats)
    (pooled / "round.json").write_text(json.dumps(settings))
    (pooled / "scores.json").write_text(json.dumps(scores))
    shutil.copy(repeats[0] / "reference.png", pooled / "reference.png")
    return pooled


def picks(model, args) -> None:
    """What CLIP feedback would pick with the CLIP ``--clip`` (default: the shipped mini CLIP): every round folder of
    an eval-feedback folder (``--feedback-dir``, its repeats too) scored again, the best text score per prompt
    picked, and the picks read by the oracles against their prompts; all candidates too."""
    import json

    from PIL import Image

    from stylecraft.evaluation import judge_candidates, make_task
    from stylecraft.scoring import load_scorer
    from stylecraft.world.oracles import load_oracles

    oracles, scorer, folder = load_oracles(), load_scorer(args.clip), Path(args.feedback_dir)
    rows: dict[str, list[dict]] = {}
    for round_dir in sorted(p for p in folder.glob("*/round2*") if (p / "round.json").is_file()):
        task = make_task(json.loads((round_dir / "round.json").read_text())["style"])
        scores = json.loads((round_dir / "scores.json").read_text())
        files = sorted(scores)
        images = [Image.open(round_dir / "candidates" / f).convert("RGB") for f in files]
        text = scorer.text_scores(images, [scores[f]["prompt"] for f in files]).tolist()
        best: dict[int, int] = {}
        for i, f in enumerate(files):
            p = scores[f]["prompt_index"]
            if p not in best or text[i] > text[best[p]]:
                best[p] = i
        for method, chosen in (("all", None), ("clip", [files[i] for i in best.values()])):
            rows.setdefault(method, []).append(judge_candidates(round_dir, chosen, task, oracles))
            print(round_dir.relative_to(folder), method, _rounded(rows[method][-1]), flush=True)
    for method, metrics in rows.items():
        print("mean", method, _rounded(_mean(metrics)), flush=True)


CHECKS = {
    "guidance": guidance,
    "by-size": by_size,
    "temperature": temperature,
    "vq-latents": vq_latents,
    "vq-agreement": vq_agreement,
    "compare": compare,
    "by-style": by_style,
    "adapters": adapters,
    "glyph": glyph,
    "mix": mix,
    "stack": stack,
    "mix-steps": mix_steps,
    "feedback": feedback,
    "round-trip": round_trip,
    "round2": round2,
    "picks": picks,
    "full-parts": full_parts,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("check", choices=list(CHECKS))
    parser.add_argument("--model", default=None, help="Muse folder (default: the shipped shapes model)")
    parser.add_argument(
        "--recipe", default="shapes-round1", help="adapter recipe for `adapters`; the style adapter's for `mix`"
    )
    parser.add_argument("--round2-recipe", default="shapes-round2", help="Round-2 adapter recipe for `feedback`")
    parser.add_argument(
        "--seed", type=int, default=DEV_SEED, help="sampling seed for `adapters`, `feedback` (never EVAL_SEED)"
    )
    parser.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="CFG scales for `adapters`")
    parser.add_argument(
        "--lambda-a",
        type=float,
        nargs="+",
        default=[0.5, 1.0, 2.0],
        help="λA values for `adapters`; `feedback` draws candidates at the first",
    )
    parser.add_argument("--per-prompt", type=int, default=4, help="`feedback`: candidates per feedback prompt")
    parser.add_argument("--rounds", type=int, default=2, help="`feedback`: rounds to chain (default 2)")
    parser.add_argument("--vqs", nargs="+", help="`vq-agreement`: vqvae folders to hold against the model's VQ")
    parser.add_argument("--models", nargs="+", help="`compare`: Muse folders to compare (default: the shipped one)")
    parser.add_argument("--sampling-steps", type=int, default=12, help="`adapters`: decoding steps")
    parser.add_argument(
        "--temperature", type=float, nargs="+", default=[2.0], help="`adapters`: sampler start temperatures (end 0)"
    )
    parser.add_argument(
        "--images-per-prompt", type=int, default=None, help="images per prompt: `adapters` (default 2), `round2` (4)"
    )
    parser.add_argument("--all-repeats", action="store_true", help="`round2`: the candidates of every repeat")
    parser.add_argument("--pooled", action="store_true", help="`round2`: every repeat's candidates as one round")
    parser.add_argument("--content-recipe", default="shapes-round2", help="`mix`: the content adapter's recipe")
    parser.add_argument(
        "--content-styles", nargs="+", default=["flat color"], help="`mix`: seen styles of the glyph renders"
    )
    parser.add_argument(
        "--plain-captions", action="store_true", help="`mix`: glyph captions never name the renders' style"
    )
    parser.add_argument(
        "--full-content-prompt", action="store_true", help="`mix`: the content adapter reads the style's name too"
    )
    parser.add_argument("--gamma", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.85], help="`mix`: γ values")
    parser.add_argument(
        "--lambda-c", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="`mix-steps`: content guidance weights"
    )
    parser.add_argument("--style", default="neon glow", help="`mix`: the held-out style of the style adapter")
    parser.add_argument(
        "--content-shape", default=None, help="`mix`: a known shape (e.g. star) for the content adapter, not the glyph"
    )
    parser.add_argument(
        "--encode-pngs", action="store_true", help="`feedback`: Round 2 on the picked PNGs encoded again, not on tokens"
    )
    parser.add_argument("--feedback-dir", default="runs/eval-feedback", help="`round-trip`: an eval-feedback folder")
    parser.add_argument("--round2-steps", type=int, nargs="+", default=[300], help="`round2`: Round 2 step counts")
    parser.add_argument(
        "--picks",
        nargs="+",
        default=["Round 2 CLIP feedback", "Round 2 oracle-picked (human stand-in)"],
        help="`round2`: which picks to train on (oracle, clip, random: made now; or a name the folder's results saved)",
    )
    parser.add_argument("--clip", default=None, help="`picks`: a CLIPModel folder (default: the shipped mini CLIP)")
    parser.add_argument("--vq", default=None, help="`vq-latents`: a VQ folder (default: the model's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from stylecraft.api import load

    CHECKS[args.check](load(args.model), args)


if __name__ == "__main__":
    main()
