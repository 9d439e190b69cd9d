"""Oracles: a small CNN that reads shape, colour, style, size and position off a 64×64 image.

They are the ground-truth judges of the shapes world: used only to EVALUATE (never to train a generator or to
select feedback). One convolutional trunk feeds one linear head per attribute.

Typical use::

    from stylecraft.world.oracles import load_oracles, oracle_accuracy

    oracles = load_oracles()
    predictions = oracles.predict(images)             # {"shape": [n], "colour": [n], "style": [n], ...} indices
    accuracy = oracle_accuracy(oracles, images, prompts)   # {"shape": 0.97, "colour": 1.0, "style": 0.9, ...}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .renderer import COLOUR_NAMES, POSITIONS, SHAPES, SIZE, SIZES, STYLES, parse_caption

# Attribute -> class names, in head order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "style": STYLES,
    "size": SIZES,
    "position": POSITIONS,
}


def _trunk(c: int) -> nn.Sequential:
    """Strided conv trunk (64→32→16→8→4 pixels), flattened: 4c·16 features."""
    return nn.Sequential(
        nn.Conv2d(3, c, 4, stride=2, padding=1),
        nn.BatchNorm2d(c),
        nn.ReLU(),  # 32×32
        nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * c),
        nn.ReLU(),  # 16×16
        nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1),
        nn.BatchNorm2d(4 * c),
        nn.ReLU(),  # 8×8
        nn.Conv2d(4 * c, 4 * c, 3, padding=1),
        nn.BatchNorm2d(4 * c),
        nn.ReLU(),
        nn.AvgPool2d(2),  # 4×4
        nn.Flatten(),
    )


class Oracles(nn.Module):
    """Strided conv trunk (64→32→16→8→4 pixels) + one linear head per attribute."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.trunk = _trunk(width)
        features = 4 * width * (SIZE // 16) ** 2
        self.heads = nn.ModuleDict({name: nn.Linear(features, len(classes)) for name, classes in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [n, 3, 64, 64] in [0, 1] -> logits per attribute {name: [n, classes]}."""
        features = self.trunk(images * 2 - 1)
        return {name: head(features) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
        """Predicted class index per attribute {name: [n]} for uint8 [n, H, W, 3] arrays or float [n, 3, H, W]
        tensors in [0, 1] (any square size; resized to 64)."""
        images = as_model_input(images)
        self.eval()
        chunks = [self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return {name: torch.cat([c[name] for c in chunks]).argmax(-1).numpy() for name in ATTRIBUTES}


def as_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 numpy [n, H, W, 3] or float tensor [n, 3, H, W] in [0, 1] -> float tensor [n, 3, 64, 64]."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [n, H, W, 3], got array of shape {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected image tensor [n, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    images = images.detach().float().cpu()
    if images.shape[-2:] != (SIZE, SIZE):
        images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return images


class GlyphOracle(nn.Module):
    """Is this image the two-adapter experiment's glyph (``renderer.GLYPH``), in any colour, size or style?
    The same trunk as ``Oracles``, one logit. Used only to evaluate, like the other oracles."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.trunk = _trunk(width)
        self.head = nn.Linear(4 * width * (SIZE // 16) ** 2, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [n, 3, 64, 64] in [0, 1] -> glyph logits [n]."""
        return self.head(self.trunk(images * 2 - 1)).squeeze(-1)

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Boolean [n]: the glyph or not, for the same inputs as ``Oracles.predict``."""
        images = as_model_input(images)
        self.eval()
        return torch.cat([self(images[i : i + batch_size]) > 0 for i in range(0, len(images), batch_size)]).numpy()


def _load(cls, path: Path, command: str):
    """A ``cls`` (width read off the weights) from safetensors at ``path``, in eval mode on the CPU."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"no weights at {path}; train them with `python -m stylecraft.world.pretrain {command} --out DIR`"
        )
    state = load_file(str(path))
    model = cls(width=state["trunk.0.weight"].shape[0])
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def load_glyph_oracle(path: str | Path | None = None) -> GlyphOracle:
    """The shipped glyph detector (or weights at ``path``), in eval mode on the CPU."""
    from . import glyph_oracle_path

    return _load(GlyphOracle, Path(path) if path is not None else glyph_oracle_path(), "glyph")


def load_oracles(path: str | Path | None = None) -> Oracles:
    """The shipped oracles (or weights at ``path``), in eval mode on the CPU."""
    from . import oracle_path

    return _load(Oracles, Path(path) if path is not None else oracle_path(), "oracles")


def labels_from_prompts(prompts: list[str]) -> dict[str, np.ndarray]:
    """Class indices per attribute {name: [n]} from captions; -1 where the caption does not say (e.g. no style)."""
    parsed = [parse_caption(p) for p in prompts]
    return {
        name: np.array([classes.index(p[name]) if p[name] is not None else -1 for p in parsed])
        for name, classes in ATTRIBUTES.items()
    }


def oracle_accuracy(
    oracles: Oracles, images: np.ndarray | torch.Tensor, targets: list[str] | dict[str, np.ndarray]
) -> dict[str, float]:
    """Fraction of images whose predicted attribute equals the target, per attribute.

    ``targets`` are captions (one per image) or label arrays {name: [n]}; attributes a caption leaves out (-1)
    are skipped, and attributes with no target at all are absent from the result. Large shapes are always centred.
    """
    labels = labels_from_prompts(targets) if isinstance(targets, list) else targets
    predictions = oracles.predict(images)
    result = {}
    for name, target in labels.items():
        target = np.asarray(target)
        known = target >= 0
        if known.any():
            result[name] = float((predictions[name][known] == target[known]).mean())
    return result
