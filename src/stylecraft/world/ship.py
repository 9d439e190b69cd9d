"""Copy trained runs into the package's weights folder, keeping each shipped model's training record and lineage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import StylecraftError
from ..io import _atomic_write, write_json
from . import WEIGHTS
from .pretrain import LINEAGE


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


SD_RUNS = {  # shapes-sd's stages: run folder name under --runs -> what it holds
    "sd-unet": "shapes-sd",
    "ip-adapter": "ip-adapter",
    "controlnet": "controlnet",
    "clip": "clip",
}
SHAPES_SD = "shapes-sd"


def ship_sd(runs: Path, block_presets: dict[str, list[str]] | None = None, weights: Path = WEIGHTS) -> Path:
    """Assemble ``WEIGHTS/shapes-sd`` from the runs in ``runs`` (sd-unet/, ip-adapter/, controlnet/, clip/, and
    oracles/ when present): the Stable Diffusion folder, plus ``ip-adapter/`` (h94 layout with its image encoder),
    ``controlnet/``, ``content_text_encoder/`` (the CLIP's text tower with projection, in the image encoder's space,
    for content subtraction) and ``training/`` (each stage's record). ``model_index.json`` gains a ``"_stylecraft"``
    entry that ``load_instantstyle`` reads: the architecture name, its block presets, and where those parts are.
    The space oracles (``oracles/``, world v2) ship as ``space_oracles.safetensors``. ``weights``: the folder to
    ship into (default the package's). Returns the shipped folder."""
    from .train_clip import clip_text_encoder

    needed = [runs / name / sub for name, sub in SD_RUNS.items()] + [runs / name / "training.json" for name in SD_RUNS]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:  # checked before anything shipped is replaced
        raise StylecraftError(
            f"nothing shipped: {missing[0]} does not exist; train that stage first (docs/shapes-sd.md)"
        )
    staging = weights / f".{SHAPES_SD}.shipping"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(runs / "sd-unet" / "shapes-sd", staging)
    shutil.copytree(runs / "ip-adapter" / "ip-adapter", staging / "ip-adapter")
    shutil.copytree(runs / "controlnet" / "controlnet", staging / "controlnet")
    clip_text_encoder(runs / "clip" / "clip").save_pretrained(staging / "content_text_encoder")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (runs / "clip" / "clip" / name).is_file():  # newer transformers write no special_tokens_map.json
            shutil.copy(runs / "clip" / "clip" / name, staging / "content_text_encoder" / name)
    (staging / "training").mkdir()
    stages = [*SD_RUNS, "sd-vae"] if (runs / "sd-vae" / "training.json").is_file() else list(SD_RUNS)
    for name in stages:
        shutil.copy(runs / name / "training.json", staging / "training" / f"{name}.json")
    index = json.loads((staging / "model_index.json").read_text())
    index["_stylecraft"] = {
        "architecture": SHAPES_SD,
        "block_presets": block_presets or {},
        "ip_adapter": ".",
        "ip_adapter_weight": "ip-adapter/ip-adapter.safetensors",
        "controlnet": "controlnet",
        "content_text_encoder": "content_text_encoder",
    }
    write_json(staging / "model_index.json", index)
    shutil.rmtree(weights / SHAPES_SD, ignore_errors=True)
    staging.rename(weights / SHAPES_SD)
    if (runs / "oracles" / "oracles.safetensors").is_file():
        _replace_file(runs / "oracles" / "oracles.safetensors", weights / "space_oracles.safetensors")
        _replace_file(runs / "oracles" / "training.json", weights / "space_oracles.training.json")
    return weights / SHAPES_SD
