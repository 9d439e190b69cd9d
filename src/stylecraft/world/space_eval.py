"""Measuring on the style space's held-out families (issues #28 and #29): renders per family, the style judge's
retrieval, and the Table-2 task of one family (one reference image, prompts that ask for other shapes and colours).

Style match is retrieval, not a class: a generated image matches when, among ``CANDIDATES`` styles drawn for
the task (the reference's and 49 other held-out styles), the style judge puts the reference's style nearest. Each
candidate style is the mean of the judge's embeddings of ``VIEWS`` renders of random content, so content cannot
decide: drawn from one scene (the reference's red circle) the judge found true renders of the asked prompts in the
reference's style 0.28 of the time in the halftone family; from 8 scenes 0.94-1.00 in every family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import renderer, space
from .oracles import Oracles
from .style_judge import StyleEmbedder, load_style_judge

CANDIDATES = 50
VIEWS = 8  # renders (random content) that stand for each candidate style
REFERENCE = {"shape": "circle", "colour": "red"}  # the reference image's content, as in the named-style harness


def load_space_oracles() -> Oracles:
    """The oracles trained on the style space's seen styles too (world v2, ``space_oracles.safetensors``) when
    shipped, else the named-style oracles."""
    from . import WEIGHTS
    from .oracles import load_oracles

    path = WEIGHTS / "space_oracles.safetensors"
    return load_oracles(path if path.is_file() else None)


def family_renders(name: str, n: int, seed: int) -> tuple[np.ndarray, renderer.Scenes, np.ndarray]:
    """``n`` random scenes in random styles of family ``name`` (``space.SEEN`` or a held-out family)."""
    rng = np.random.default_rng([seed, len(name)])
    scenes = renderer.sample_scenes(n, rng)
    members = space.family_ids(name)
    ids = members[rng.integers(len(members), size=n)]
    return space.render_styles(scenes, ids, rng), scenes, ids


def _scene(shape: str, colour: str, n: int) -> renderer.Scenes:
    """``n`` copies of one large centred scene."""
    return renderer.Scenes(
        shape=np.full(n, renderer.SHAPES.index(shape)),
        colour=np.full(n, renderer.COLOUR_NAMES.index(colour)),
        size=np.ones(n, dtype=int),
        position=np.zeros(n, dtype=int),
        style=np.zeros(n, dtype=int),
    )


def style_retrieval(
    transform: Callable[[np.ndarray], torch.Tensor], name: str, seed: int, judge: StyleEmbedder | None = None
) -> float:
    """Top-1 share of ``CANDIDATES`` styles of family ``name``, one scene drawn in each, whose ``transform``ed
    render (e.g. a VAE's reconstruction) finds its own original among all originals."""
    judge = judge or load_style_judge()
    rng = np.random.default_rng([seed, 7])
    members = space.family_ids(name)
    ids = rng.choice(members, size=min(CANDIDATES, len(members)), replace=False)
    scenes = renderer.sample_scenes(1, rng)
    scenes = renderer.Scenes(**{k: np.repeat(v, len(ids)) for k, v in scenes.labels().items()})
    originals = space.render_styles(scenes, ids, rng)
    with torch.no_grad():
        queries = judge.embed(transform(originals))
        keys = judge.embed(originals)
    return round(float(((queries @ keys.T).argmax(1) == torch.arange(len(ids))).float().mean()), 4)


@dataclass
class FamilyTask:
    """One held-out family's task: the reference image, its style, the prompts' content, the candidates."""

    family: str
    style_id: int
    reference: np.ndarray  # uint8 [64, 64, 3]: a large red circle in the reference style
    shapes: np.ndarray  # [n] asked shape index (never the circle)
    colours: np.ndarray  # [n] asked colour index (never red)
    candidate_ids: np.ndarray  # [CANDIDATES] style ids, the reference's first
    candidates: np.ndarray  # uint8 [CANDIDATES, VIEWS, 64, 64, 3]: each candidate style over random scenes
    _keys: dict = field(default_factory=dict, repr=False, compare=False)  # judge -> candidate_keys, computed once

    def prompts(self, with_style: bool = True) -> list[str]:
        """The asked content, with the reference's descriptor (``"... in <descriptor> style"``) or without."""
        style = f" in {space.describe(self.style_id)} style" if with_style else ""
        return [
            f"a large {renderer.COLOUR_NAMES[c]} {renderer.SHAPES[s]}{style}"
            for s, c in zip(self.shapes, self.colours, strict=True)
        ]


def family_task(name: str, num_prompts: int = 64, seed: int = 0) -> FamilyTask:
    """The task of held-out family ``name``: a member style (seeded), its reference image, ``num_prompts`` prompts
    of other shapes and colours, and the reference's style with 49 other held-out styles, each over random scenes."""
    rng = np.random.default_rng([seed, sorted(space.HELD_OUT_FAMILIES).index(name)])
    style_id = int(rng.choice(space.family_ids(name)))
    others = space.HELD_OUT_IDS[space.HELD_OUT_IDS != style_id]
    candidate_ids = np.concatenate([[style_id], rng.choice(others, size=CANDIDATES - 1, replace=False)])
    reference = space.render_styles(_scene(**REFERENCE, n=1), candidate_ids[:1], seed)[0]
    views = renderer.sample_scenes(CANDIDATES * VIEWS, rng)
    candidates = space.render_styles(views, np.repeat(candidate_ids, VIEWS), rng)
    shapes = [k for k, s in enumerate(renderer.SHAPES) if s != REFERENCE["shape"]]
    colours = [k for k, c in enumerate(renderer.COLOUR_NAMES) if c != REFERENCE["colour"]]
    return FamilyTask(
        family=name,
        style_id=style_id,
        reference=reference,
        shapes=np.array(shapes)[rng.integers(len(shapes), size=num_prompts)],
        colours=np.array(colours)[rng.integers(len(colours), size=num_prompts)],
        candidate_ids=candidate_ids,
        candidates=candidates.reshape(CANDIDATES, VIEWS, *candidates.shape[1:]),
    )


@torch.no_grad()
def measure_family(
    images: np.ndarray | torch.Tensor, task: FamilyTask, oracles: Oracles, judge: StyleEmbedder | None = None
) -> dict[str, float]:
    """Style match (retrieval of the reference among the candidates), content (shape and colour both as asked),
    leakage (the reference's shape or colour where another was asked) of images made for ``task.prompts()``."""
    judge = judge or load_style_judge()
    similarity = judge.embed(images) @ task_keys(task, judge).T  # [n, CANDIDATES]; candidate 0 is the reference's
    nearest = similarity.argmax(1).numpy()
    predicted = oracles.predict(images)
    shape_ok = predicted["shape"] == task.shapes
    colour_ok = predicted["colour"] == task.colours
    leaked = (predicted["shape"] == renderer.SHAPES.index(REFERENCE["shape"])) | (
        predicted["colour"] == renderer.COLOUR_NAMES.index(REFERENCE["colour"])
    )
    return {
        "style_match": round(float((nearest == 0).mean()), 4),
        "style_rank": round(float(style_rank(similarity).mean()), 4),
        "content": round(float((shape_ok & colour_ok).mean()), 4),
        "shape": round(float(shape_ok.mean()), 4),
        "colour": round(float(colour_ok.mean()), 4),
        "leakage": round(float(leaked.mean()), 4),
    }


def style_rank(similarity: torch.Tensor) -> torch.Tensor:
    """Per image, the share of the other candidate styles that the reference's (column 0) is nearer than: 1.0 when
    it is the nearest (a style match), 0.5 by chance. It moves before the top-1 match does, so it can show a
    partial transfer (the palette and ground taken, not the texture) that retrieval scores as 0."""
    return (similarity[:, :1] > similarity[:, 1:]).float().mean(1)


@dataclass
class PromptedTask:
    """Prompts that name space styles (``"... in <descriptor> style"``): can a text-to-image model draw them?"""

    scenes: renderer.Scenes  # asked content
    style_ids: np.ndarray  # [n] asked style, each one of ``candidate_ids``
    candidate_ids: np.ndarray  # [CANDIDATES]
    candidates: np.ndarray  # uint8 [CANDIDATES, VIEWS, 64, 64, 3]
    _keys: dict = field(default_factory=dict, repr=False, compare=False)  # judge -> candidate_keys, computed once

    def prompts(self) -> list[str]:
        return space.captions(self.scenes, self.style_ids)


def prompted_task(n: int, seed: int, held_out: bool = False) -> PromptedTask:
    """``n`` prompts of random content in styles drawn from ``CANDIDATES`` seen (or held-out) space styles."""
    rng = np.random.default_rng([seed, 11])
    pool = space.HELD_OUT_IDS if held_out else space.SEEN_IDS
    candidate_ids = rng.choice(pool, size=CANDIDATES, replace=False)
    views = space.render_styles(renderer.sample_scenes(CANDIDATES * VIEWS, rng), np.repeat(candidate_ids, VIEWS), rng)
    return PromptedTask(
        scenes=renderer.sample_scenes(n, rng),
        style_ids=candidate_ids[rng.integers(CANDIDATES, size=n)],
        candidate_ids=candidate_ids,
        candidates=views.reshape(CANDIDATES, VIEWS, *views.shape[1:]),
    )


def task_keys(task: FamilyTask | PromptedTask, judge: StyleEmbedder) -> torch.Tensor:
    """``candidate_keys`` of a task's candidates, computed once per judge (every row of a table reuses them)."""
    if judge not in task._keys:
        task._keys[judge] = candidate_keys(task.candidates, judge)
    return task._keys[judge]


def candidate_keys(candidates: np.ndarray, judge: StyleEmbedder) -> torch.Tensor:
    """Each candidate style's key [CANDIDATES, d]: the normalised mean of its views' style embeddings."""
    keys = judge.embed(candidates.reshape(-1, *candidates.shape[2:])).reshape(len(candidates), candidates.shape[1], -1)
    return torch.nn.functional.normalize(keys.mean(1), dim=-1)


@torch.no_grad()
def measure_prompted(
    images: np.ndarray | torch.Tensor, task: PromptedTask, oracles: Oracles, judge: StyleEmbedder | None = None
) -> dict[str, float]:
    """Shape, colour, size (oracles) and style (the asked style retrieved among the candidates) of images made for
    ``task.prompts()``."""
    judge = judge or load_style_judge()
    nearest = (judge.embed(images) @ task_keys(task, judge).T).argmax(1).numpy()
    predicted = oracles.predict(images)
    result = {k: round(float((predicted[k] == getattr(task.scenes, k)).mean()), 4) for k in ("shape", "colour", "size")}
    result["style"] = round(float((task.candidate_ids[nearest] == task.style_ids).mean()), 4)
    return result


def prompted_report(draw: Callable[[list[str]], torch.Tensor], oracles: Oracles, n: int, seed: int) -> dict:
    """A generator's report on prompts naming the space's styles: ``n`` prompts of seen styles (the target) and of
    held-out ones (words it never read, for reference), drawn by ``draw`` (prompts -> images), each group measured by
    ``measure_prompted``."""
    result = {}
    for group, held_out in (("seen", False), ("held_out", True)):
        task = prompted_task(n, seed, held_out)
        result[group] = measure_prompted(draw(task.prompts()), task, oracles)
    return result


@torch.no_grad()
def autoencoder_report(transform: Callable[[np.ndarray], torch.Tensor], oracles: Oracles, n: int, seed: int) -> dict:
    """How well an autoencoder (``transform``: uint8 renders -> float reconstructions [n, 3, 64, 64] in [0, 1])
    keeps each family of the style space (seen and every held-out one): oracle shape and colour on ``n`` renders
    and on their reconstructions, pixel MSE, and ``style_retrieval`` (the reconstruction finds its original among 50
    styles of the family drawing one scene)."""
    import torch.nn.functional as F

    from .pretrain import to_tensor

    result, judge = {}, load_style_judge()
    for name in (space.SEEN, *space.HELD_OUT_FAMILIES):
        images, scenes, _ = family_renders(name, n, seed)
        recon = torch.cat([transform(images[i : i + 64]) for i in range(0, n, 64)])
        labels = {k: v for k, v in scenes.labels().items() if k in ("shape", "colour")}
        original, rebuilt = oracles.predict(images), oracles.predict(recon)
        result[name] = {
            **{f"original_{k}": round(float((original[k] == v).mean()), 4) for k, v in labels.items()},
            **{f"reconstruction_{k}": round(float((rebuilt[k] == v).mean()), 4) for k, v in labels.items()},
            "pixel_mse": round(F.mse_loss(recon, to_tensor(images)).item(), 5),
            "style_retrieval": style_retrieval(transform, name, seed, judge),
        }
    return result
