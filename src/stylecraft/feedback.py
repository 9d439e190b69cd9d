"""Iterative training with feedback (StyleDrop §3.3): Round 2 learns from the best of Round 1's own outputs.

A Round-1 adapter trained on one image overfits: content of the reference leaks into new prompts. For each of P
prompts we generate K candidates with it, select one per prompt (``clip``: best CLIP text score, the paper's
automatic feedback; ``random``; ``human``: picks made on the feedback page), and train a fresh Round-2 adapter
(paper: d_prj 32, not shared) on the selected (image, prompt) pairs.

The round folder is the contract between this module, the feedback page (``stylecraft ui``) and evaluation::

    ROUND/round.json               settings: adapter path + weights hash, base model, style, prompts, K, seed, sampling
    ROUND/reference.png            the style reference: a Round-1 adapter's (first) training image, or the one a
                                   later round's adapter carries (ADAPTER/style_reference.png)
    ROUND/candidates/pPPP_kKKK.png candidate K of prompt P (written as generated; a rerun skips finished prompts)
    ROUND/tokens/pPPP_kKKK.safetensors  the VQ tokens it was decoded from (Round 2 trains on these)
    ROUND/scores.json              {file: {prompt_index, prompt, text_score, style_score}}
    ROUND/picks.json               the picks {"selected": [file, ...], "target": N}: a person's, saved per click on
                                   the feedback page, or the clip/random ones of ``feedback --no-train`` to start from
    ROUND/selection.json           what Round 2 was trained on {"method": clip|random|human, "selected": [...]}
    ../.ROUND.lock                 the round's lock (``stylecraft.locks``): held by ``stylecraft feedback`` and by
                                   ``stylecraft ui`` while it serves, so only one process changes the round
    ROUND/adapter/                 the Round-2 adapter (its train_images/ are the selected pairs, and
                                   style_reference.png is ROUND/reference.png, so Round 3 from it scores against
                                   the same reference)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from .errors import StylecraftError
from .io import _atomic_write, save_png, to_pil_images, write_json
from .sampling import SamplingConfig, sample_tokens
from .validation import read_text

SELECTIONS = ("clip", "random", "human")
STYLE_REFERENCE_NAME = "style_reference.png"  # in a Round-2 (or later) adapter folder: the style reference
PICKS_NAME, SCORES_NAME, ROUND_NAME = "picks.json", "scores.json", "round.json"

# The shapes world's feedback prompts: content the reference (a large red circle) does not have, one shape and
# colour each, so Round 2 sees the style on varied content. 30 of them, as the paper's P; disjoint from the
# evaluation prompts' pairs (tests/test_feedback.py checks both).
SHAPES_WORLD_CONTENT = [
    "a large blue square",
    "a large green triangle",
    "a large yellow star",
    "a large purple heart",
    "a large orange cross",
    "a large cyan diamond",
    "a large pink moon",
    "a large green square",
    "a large blue star",
    "a large yellow heart",
    "a large cyan star",
    "a large orange diamond",
    "a large yellow triangle",
    "a large green star",
    "a large cyan heart",
    "a large blue cross",
    "a large purple diamond",
    "a large pink cross",
    "a large yellow moon",
    "a large purple triangle",
    "a large orange heart",
    "a large yellow cross",
    "a large green diamond",
    "a large cyan moon",
    "a large pink square",
    "a large orange triangle",
    "a large cyan cross",
    "a large blue diamond",
    "a large purple moon",
    "a large blue heart",
]


def candidate_name(prompt_index: int, k: int) -> str:
    return f"p{prompt_index:03d}_k{k:03d}.png"


def tokens_path(round_dir: str | Path, file: str) -> Path:
    """Where a candidate's VQ tokens are kept: ROUND/tokens/pNNN_kNNN.safetensors."""
    return Path(round_dir) / "tokens" / Path(file).with_suffix(".safetensors").name


def vq_id(muse) -> str:
    """A hash of the VQ codebook: tokens are only meaningful to the VQ that decoded them."""
    codebook = muse.vqvae.quantize.embedding.weight.detach().cpu().contiguous()
    return hashlib.sha256(codebook.numpy().tobytes()).hexdigest()[:16]


def save_tokens(path: Path, tokens: torch.Tensor, vq: str) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({"tokens": tokens.detach().cpu().contiguous()}, partial, metadata={"vq": vq})
    partial.replace(path)


def candidate_tokens(muse, round_dir: str | Path, files: list[str]) -> torch.Tensor | None:
    """The VQ tokens the candidates ``files`` were decoded from, [N, h, w]; None unless every one of them was kept
    and belongs to this model's VQ (rounds made before tokens were kept, or by another model)."""
    from safetensors import safe_open

    vq, tokens = vq_id(muse), []
    for file in files:
        path = tokens_path(round_dir, file)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            if handle.metadata().get("vq") != vq:
                return None
            tokens.append(handle.get_tensor("tokens"))
    return torch.stack(tokens)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    lines = read_text(path, "prompts file").splitlines()  # missing or not UTF-8: one error line
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not prompts:
        raise StylecraftError(f"prompts file {path} has no prompts; write one prompt per line")
    return prompts


def default_prompts(muse, style: str) -> list[str]:
    """The built-in prompt list for this base model, with the style descriptor appended."""
    if muse.name != "shapes":
        from .prompts import TABLE_S2_CONTENT

        contents = TABLE_S2_CONTENT
    else:
        contents = SHAPES_WORLD_CONTENT
    return [f"{content} in {style} style" for content in contents]


def weights_hash(adapter_folder: str | Path) -> str:
    return hashlib.sha256((Path(adapter_folder) / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]


def generate_candidates(
    muse,
    adapter: str | Path,
    prompts: list[str],
    round_dir: str | Path,
    style: str,
    per_prompt: int = 8,
    seed: int = 0,
    config: SamplingConfig | None = None,
    clip: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Generate ``per_prompt`` candidates for each prompt into ``round_dir`` and score them; resumable.

    Each prompt's candidates come from their own generator (seed, prompt index), so a rerun after a crash produces
    the same images and skips prompts whose candidates and scores are already on disk. The VQ tokens each
    candidate was decoded from are kept beside it (``tokens_path``) for Round-2 training.
    """
    from tqdm.auto import tqdm

    from .adapters import AdaptedTransformer, read_adapter
    from .scoring import load_scorer

    if per_prompt < 1:
        raise StylecraftError(f"--per-prompt must be at least 1, got {per_prompt}")
    if not prompts:
        raise StylecraftError("no feedback prompts; pass --prompts FILE with one prompt per line")
    round_dir = Path(round_dir)
    config = config or SamplingConfig(lambda_a=0.0)
    adapter_config, _ = read_adapter(adapter)
    settings = {
        "adapter": str(Path(adapter).resolve()),
        "adapter_hash": weights_hash(adapter),
        "base_model": adapter_config.base_model,
        "base_fingerprint": adapter_config.base_fingerprint,
        "style": style,
        "prompts": prompts,
        "per_prompt": per_prompt,
        "seed": seed,
        "sampling": asdict(config),
    }
    existing = round_dir / ROUND_NAME
    if existing.is_file():
        saved = json.loads(existing.read_text())
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            raise StylecraftError(
                f"round folder {round_dir} was made with other settings ({', '.join(changed)}); use a new --out"
            )
    round_dir.mkdir(parents=True, exist_ok=True)
    write_json(existing, settings)
    reference = style_reference(adapter)
    if reference is not None and not (round_dir / "reference.png").is_file():
        _atomic_write(round_dir / "reference.png", partial(shutil.copyfile, reference))

    model = AdaptedTransformer(muse)
    name = model.load_adapter(adapter, name="round")
    scorer = load_scorer(clip)
    scores = load_scores(round_dir)
    vq = vq_id(muse)
    options = dict(model=model, adapter=name, num_images_per_prompt=per_prompt, progress=False)
    reference_path = round_dir / "reference.png"
    reference_image = Image.open(reference_path).convert("RGB") if reference_path.is_file() else None
    disable = not progress or os.environ.get("STYLECRAFT_QUIET") == "1"
    for p, prompt in enumerate(tqdm(prompts, desc="candidates", disable=disable)):
        files = [candidate_name(p, k) for k in range(per_prompt)]
        if all(f in scores and (round_dir / "candidates" / f).is_file() for f in files):
            continue
        generator = torch.Generator("cpu").manual_seed(seed * 100_003 + p)
        tokens = sample_tokens(muse, [prompt], config, generator=generator, **options)
        images = to_pil_images(muse.decode_tokens(tokens))
        text = scorer.text_scores(images, prompt).tolist()
        style_scores = (
            scorer.style_scores(images, reference_image).tolist() if reference_image else [None] * len(images)
        )
        for k, image in enumerate(images):
            save_png(image, round_dir / "candidates" / files[k], {"prompt": prompt, "prompt_index": p, "k": k})
            save_tokens(tokens_path(round_dir, files[k]), tokens[k], vq)
            scores[files[k]] = {
                "prompt_index": p,
                "prompt": prompt,
                "text_score": text[k],
                "style_score": style_scores[k],
            }
        write_json(round_dir / SCORES_NAME, scores)  # after each prompt: an interruption loses at most one prompt
    return scores


def style_reference(adapter: str | Path) -> Path | None:
    """The style reference behind an adapter: the one a later round's adapter carries, else, for ROUND/adapter, the
    round's own (``train_round`` copies it in only after the adapter is in place, so a kill in between leaves none),
    else the adapter's (first) training image (a Round-1 adapter's is the reference itself; a Round-2 adapter's first
    is only a pick)."""
    adapter = Path(adapter)
    paths = [adapter / STYLE_REFERENCE_NAME, adapter / "train_images" / "000.png"]
    if adapter.name == "adapter" and (adapter.parent / ROUND_NAME).is_file():
        paths.insert(1, adapter.parent / "reference.png")
    return next((path for path in paths if path.is_file()), None)


def load_scores(round_dir: str | Path) -> dict:
    path = Path(round_dir) / SCORES_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StylecraftError(f"{path} is corrupt ({err}); delete it to rescore the candidates") from None


def read_round(round_dir: str | Path) -> tuple[dict, dict]:
    """(round settings, scores) of a round folder, with a clear error when it is missing or malformed."""
    round_dir = Path(round_dir)
    path = round_dir / ROUND_NAME
    if not path.is_file():
        raise StylecraftError(f"{round_dir} is not a feedback round folder (no {ROUND_NAME}); run stylecraft feedback")
    try:
        settings = json.loads(path.read_text())
        settings["prompts"], settings["per_prompt"]  # noqa: B018 - required keys
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise StylecraftError(f"{path} is malformed ({err}); regenerate the round") from None
    return settings, load_scores(round_dir)


def select(round_dir: str | Path, method: str, seed: int = 0) -> list[str]:
    """Pick candidate files: ``clip`` (best text score per prompt), ``random`` (one per prompt), ``human``."""
    if method not in SELECTIONS:
        raise StylecraftError(f"unknown --select {method!r}; use one of {', '.join(SELECTIONS)}")
    round_dir = Path(round_dir)
    settings, scores = read_round(round_dir)
    if method == "human":
        picks = read_picks(round_dir)
        if not picks:
            raise StylecraftError(
                f"no human picks in {round_dir / PICKS_NAME}; pick images with: stylecraft ui --round {round_dir}"
            )
        return picks
    by_prompt: dict[int, list[str]] = {}
    for file, score in sorted(scores.items()):
        by_prompt.setdefault(score["prompt_index"], []).append(file)
    if len(by_prompt) < len(settings["prompts"]):
        raise StylecraftError(
            f"{round_dir} has candidates for {len(by_prompt)} of {len(settings['prompts'])} prompts; "
            "rerun stylecraft feedback to finish generating"
        )
    rng = random.Random(seed)
    if method == "clip":  # StyleDrop's CLIP feedback: the candidate that best follows its prompt
        return [max(files, key=lambda f: scores[f]["text_score"]) for _, files in sorted(by_prompt.items())]
    return [rng.choice(files) for _, files in sorted(by_prompt.items())]


def read_picks(round_dir: str | Path) -> list[str]:
    """The human picks saved by the feedback page; every pick must name an existing candidate."""
    round_dir = Path(round_dir)
    path = round_dir / PICKS_NAME
    if not path.is_file():
        return []
    try:
        picks = json.loads(path.read_text()).get("selected", [])
    except (json.JSONDecodeError, AttributeError) as err:
        raise StylecraftError(f"{path} is corrupt ({err}); pick again on the feedback page") from None
    missing = [p for p in picks if not isinstance(p, str) or "/" in p or not (round_dir / "candidates" / p).is_file()]
    if missing:
        raise StylecraftError(f"{path} picks {missing[0]!r}, which is not a candidate image of this round")
    return list(dict.fromkeys(picks))


def write_picks(round_dir: str | Path, selected: list[str], target: int = 10) -> None:
    """Save a person's picks atomically (the feedback page calls this on every click)."""
    write_json(Path(round_dir) / PICKS_NAME, {"selected": list(dict.fromkeys(selected)), "target": target})


def train_round(
    muse,
    round_dir: str | Path,
    selected: list[str],
    recipe: str | None = None,
    steps: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    adapter_dir: str | Path | None = None,
    on_step=None,
):
    """Train a fresh adapter on the selected candidates into ROUND/adapter (or ``adapter_dir``).

    It trains on the tokens the candidates were decoded from when the round kept them for this model's VQ
    (``candidate_tokens``): encoding the PNGs again would not give them back, and pixel art, for one, read as its
    style in 19 of 30 oracle picks but in 11 of 30 after a trip through the VQ (docs/shapes-experiments.md,
    "Feedback rounds"). The adapter folder keeps its training set (``train_images/``, prompts in the PNG text chunks).
    ``recipe`` defaults to StyleDrop's Round 2 for ``muse`` (``training.default_recipe``)."""
    from .training import default_recipe, load_recipe, train_adapter

    round_dir = Path(round_dir)
    _, scores = read_round(round_dir)
    if not selected:
        raise StylecraftError("no images selected for Round 2")
    images, prompts = [], []
    for file in selected:
        if file not in scores:
            raise StylecraftError(f"{file} is not a scored candidate of {round_dir}")
        images.append(Image.open(round_dir / "candidates" / file).convert("RGB"))
        prompts.append(scores[file]["prompt"])
    config = load_recipe(recipe or default_recipe(muse.name, "round2"), steps=steps)
    out = Path(adapter_dir) if adapter_dir is not None else round_dir / "adapter"
    tokens = candidate_tokens(muse, round_dir, selected)
    adapted = train_adapter(
        muse, images, prompts, config, out, overwrite=overwrite, progress=progress, on_step=on_step, tokens=tokens
    )
    if (round_dir / "reference.png").is_file():  # Round 3 from this adapter scores against the same reference
        _atomic_write(out / STYLE_REFERENCE_NAME, partial(shutil.copyfile, round_dir / "reference.png"))
    return adapted


def run_cli(args) -> int:
    from .api import load
    from .locks import folder_lock
    from .sampling import SamplingConfig

    if args.per_prompt is not None and args.per_prompt < 1:
        raise StylecraftError(f"--per-prompt must be at least 1, got {args.per_prompt}")
    out = Path(args.out)
    # The round's lock, taken before any work: one process at a time. `stylecraft ui` holds the same lock while it
    # serves, so its picks and Round 2 are never changed under it.
    with folder_lock(out.resolve(), "feedback"):
        muse = load(args.model, args.device)
        prompts = read_prompts(args.prompts) if args.prompts else default_prompts(muse, args.style)
        if args.num_prompts is not None:
            if args.num_prompts < 1:
                raise StylecraftError(f"--num-prompts must be at least 1, got {args.num_prompts}")
            prompts = prompts[: args.num_prompts]
        # Unset options take the round's own settings when it exists (a rerun resumes it even if a default changed
        # since), else the model's sampling defaults and 8 candidates per prompt.
        saved = read_round(out)[0] if (out / ROUND_NAME).is_file() else {}
        sampling = {**muse.sampling_defaults, **(saved.get("sampling") or {})}
        config = SamplingConfig(
            steps=args.steps,
            guidance_scale=sampling["guidance_scale"] if args.guidance is None else args.guidance,
            lambda_a=sampling["lambda_a"] if args.lambda_a is None else args.lambda_a,
        )
        per_prompt = saved.get("per_prompt", 8) if args.per_prompt is None else args.per_prompt
        scores = generate_candidates(
            muse, args.adapter, prompts, out, args.style, per_prompt, args.seed, config, clip=args.clip
        )
        if args.no_train and args.select == "human":  # docs/ui.md's first step: the person picks next
            print(f"{len(scores)} candidates scored in {out}; pick images with: stylecraft ui --round {out}")
            return 0
        selected = select(out, args.select, args.seed)
        if args.no_train:  # the picks go where the studio and --select human read them, a person's never replaced
            existing = read_picks(out)
            if existing and existing != selected:
                raise StylecraftError(
                    f"{out / PICKS_NAME} already holds other picks ({len(existing)}, made in the studio?); move it "
                    f"aside to replace them with the {args.select} picks, or train on them with --select human"
                )
            if not existing:
                write_picks(out, selected)
            print(
                f"{len(selected)} {args.select} picks in {out / PICKS_NAME}; review them: stylecraft ui --round {out}"
            )
            return 0
        train_round(muse, out, selected, recipe=args.recipe, steps=args.train_steps, overwrite=True)
        write_json(out / "selection.json", {"method": args.select, "selected": selected})  # what it was trained on
    print(out / "adapter")
    return 0
