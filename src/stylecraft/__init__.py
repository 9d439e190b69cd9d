"""stylecraft: make a text-to-image model draw in the style of one reference image.

Public API (imported lazily so the command line starts fast): ``load``, ``train``, ``sample``,
``SamplingConfig``, ``TrainConfig``, ``StylecraftError``.
"""

__version__ = "0.1.0"
__all__ = ["load", "train", "sample", "SamplingConfig", "TrainConfig", "StylecraftError"]


def __getattr__(name: str):
    if name in ("load", "train", "sample"):
        from . import api

        return getattr(api, name)
    if name == "SamplingConfig":
        from .sampling import SamplingConfig

        return SamplingConfig
    if name == "TrainConfig":
        from .training import TrainConfig

        return TrainConfig
    if name == "StylecraftError":
        from .errors import StylecraftError

        return StylecraftError
    raise AttributeError(f"module 'stylecraft' has no attribute {name!r}")
