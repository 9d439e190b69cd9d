"""The feedback studio (``stylecraft ui``): a local web page to pick Round-2 images and train on them."""

from .server import Studio, StudioServer, run_cli

__all__ = ["Studio", "StudioServer", "run_cli"]
