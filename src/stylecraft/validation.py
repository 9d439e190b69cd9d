"""Checking what users hand us, in one place: command-line flags, recipe and adapter_config.json fields,
trainer_state.json, prompt files and devices. Every problem is one ``StylecraftError`` line that names the value
and the fix, raised before any work starts (image headers are checked in ``io.load_image``, before decoding).

A check is a function ``check(name, value)`` that raises for a bad value; ``FLAGS``, ``TRAIN_CONFIG``,
``ADAPTER_CONFIG`` and ``TRAINER_STATE`` say which check each field gets. Numbers must be finite (``nan`` and
``inf`` parse as floats but are never a setting), integers must be integers (JSON ``true`` and ``"8"`` are not), and
sizes that decide how much memory a call allocates have caps, so an absurd value is refused instead of allocating
until memory runs out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import StylecraftError

Check = Callable[[str, Any], None]

MAX_IMAGES = 256  # images per prompt of one call: they are decoded as one batch
MAX_BATCH = 256  # training batch size (the paper's is 8)
MAX_RANK = 1024  # adapter rank / bottleneck width (the paper's d_prj is 4; aMUSEd's width is 1024)
MAX_SHIFT = 4  # training shift in whole tokens: every image is encoded (2N+1)² times
MAX_STEPS = 1_000_000  # training or decoding steps
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
MAX_WIDTH = 1_000_000  # num_layers / hidden_size an adapter may name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is a bool, not the number 1


def integer(low: int = 0, high: int | None = None) -> Check:
    """An int in [low, high]; above ``high`` the message names the cap."""

    def check(name: str, value: Any) -> None:
        if not _is_int(value):
            raise StylecraftError(f"{name} must be a whole number, got {value!r}")
        if value < low:
            raise StylecraftError(f"{name} must be at least {low}, got {value}")
        if high is not None and value > high:
            raise StylecraftError(f"{name} {value} is above the cap of {high}; use at most {high}")

    return check


def real(low: float = -math.inf, high: float = math.inf, positive: bool = False) -> Check:
    """A finite number in [low, high] (above 0 with ``positive``); ints count, bools and strings do not."""

    def check(name: str, value: Any) -> None:
        if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise StylecraftError(f"{name} must be a finite number, got {value!r}")
        if positive and not value > 0:
            raise StylecraftError(f"{name} must be above 0, got {value}")  # checked first: (0, high] reads as above
        if not low <= value <= high:
            limits = f"{low:g} or above" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise StylecraftError(f"{name} must be {limits}, got {value}")

    return check


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):  # "no" is truthy: only JSON true / false say what they mean
        raise StylecraftError(f"{name} must be true or false, got {value!r}")


def text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise StylecraftError(f"{name} must be a string, got {value!r}")


def mapping(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise StylecraftError(f"{name} must be a JSON object, got {value!r}")


def one_of(*choices: str) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            raise StylecraftError(f"{name} must be one of {', '.join(choices)}, got {value!r}")

    return check


def list_of(item: Check) -> Check:
    """A list whose every element passes ``item``."""

    def check(name: str, value: Any) -> None:
        if not isinstance(value, list):
            raise StylecraftError(f"{name} must be a list, got {value!r}")
        for i, element in enumerate(value):
            item(f"{name}[{i}]", element)

    return check


def optional(check: Check) -> Check:
    return lambda name, value: None if value is None else check(name, value)


seed = integer(0, MAX_SEED)


def shift(name: str, value: Any) -> None:
    if _is_int(value) and value < 0:
        raise StylecraftError(f"{name} must be 0 (off) or a number of tokens, got {value}")
    integer(0, MAX_SHIFT)(name, value)


# Command-line flags by argparse ``dest``, whatever the command (``--steps`` is decoding steps for sample and
# training steps for train: both at least 1).
FLAGS: dict[str, Check] = {
    "steps": integer(1, MAX_STEPS),
    "train_steps": integer(1, MAX_STEPS),
    "num_images": integer(1, MAX_IMAGES),
    "per_prompt": integer(1, MAX_IMAGES),
    "num_prompts": integer(1),
    "repeats": integer(1, 100),
    "batch_size": integer(1, MAX_BATCH),
    "rank": integer(1, MAX_RANK),
    "shift": shift,
    "sample_every": integer(0, MAX_STEPS),
    "checkpoint_every": integer(1, MAX_STEPS),  # the final checkpoint is always written; 0 and below mean nothing
    "seed": seed,
    "lr": real(0, 1e30, positive=True),  # torch's float32 Adam arithmetic overflows near 1e38
    "guidance": real(),
    "lambda_a": real(),
    "lambda_b": real(),
    "gamma": real(0, 1),
    "temperature": real(0),  # Gumbel noise scale: a negative one turns sampling upside down
    "scale": real(),
    "subtract": real(),
    "controlnet_scale": real(),
    "num_class_images": integer(1, 100_000),
    "lambda_prior": real(0),
    "target": integer(1, 100_000),
    "port": integer(0, 65535),
}


def check_args(args: Any) -> None:
    """Check every flag of a parsed command line that ``FLAGS`` knows (lists element by element), and ``--device``."""
    for dest, value in vars(args).items():
        if value is None or dest not in FLAGS:
            continue
        flag = "--" + dest.replace("_", "-")
        for element in value if isinstance(value, list) else [value]:
            FLAGS[dest](flag, element)
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def check_fields(values: dict, schema: dict[str, Check], where: str = "", flags: bool = False) -> None:
    """Check the fields of ``values`` that ``schema`` names (others pass). Messages start with ``where`` and name a
    field as itself, or with ``flags`` as its command-line flag (``batch_size`` -> ``--batch-size``)."""
    for name, check in schema.items():
        if name in values:
            try:
                check("--" + name.replace("_", "-") if flags else name, values[name])
            except StylecraftError as err:
                raise StylecraftError(f"{where}{err}") from None


TRAIN_CONFIG: dict[str, Check] = {
    "adapter_type": text,
    "rank": integer(1, MAX_RANK),
    "shared": optional(boolean),
    "lora_alpha": optional(integer(1)),
    "target_modules": list_of(text),
    "extra_sites": list_of(text),
    "steps": integer(1, MAX_STEPS),
    "lr": real(0, 1e30, positive=True),  # torch's float32 Adam arithmetic overflows near 1e38
    "batch_size": integer(1, MAX_BATCH),
    "weight_decay": real(0),
    "max_grad_norm": real(positive=True),
    "seed": seed,
    "shift": shift,
    "sample_every": integer(0, MAX_STEPS),
    "checkpoint_every": integer(0, MAX_STEPS),  # 0: only the final checkpoint
    "mixed_precision": one_of("no", "fp16", "bf16"),
    "sample_steps": integer(1, MAX_STEPS),
    "sample_guidance": optional(real()),
    "class_prompt": optional(text),
    "num_class_images": integer(0, 100_000),
    "lambda_prior": real(0),
}

SAMPLING_CONFIG: dict[str, Check] = {
    "steps": integer(1, MAX_STEPS),
    "guidance_scale": real(),
    "lambda_a": optional(real()),
    "lambda_b": optional(real()),
    "temperature": list_of(real(0)),
    "negative_prompt": text,
    "gamma": real(0, 1),
    "aesthetic_score": real(),
    "crop": list_of(integer()),
}

ADAPTER_CONFIG: dict[str, Check] = {
    "adapter_type": text,
    "rank": integer(1, MAX_RANK),
    "shared": boolean,
    "lora_alpha": optional(integer(1)),
    "target_modules": list_of(text),
    "extra_sites": list_of(text),
    "base_model": text,
    "base_fingerprint": text,
    "base_weights": text,
    "num_layers": integer(0, MAX_WIDTH),
    "hidden_size": integer(0, MAX_WIDTH),
    "token_grid": integer(0, MAX_WIDTH),
    "prompts": list_of(text),
    "training": mapping,
}

TRAINER_STATE: dict[str, Check] = {
    "step": integer(0, MAX_STEPS),
    "config": mapping,
    "param_groups": list_of(mapping),
    "log": list_of(mapping),
    "inputs": mapping,
}


def read_json(path: str | Path, fix: str) -> Any:
    """Parse a JSON file; unreadable, not UTF-8, not JSON or nested too deep is one error naming it and ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        problem = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise StylecraftError(f"{path} is corrupt (not readable JSON: {problem}); {fix}") from None


def read_trainer_state(path: str | Path) -> dict:
    """The checkpoint's trainer_state.json, with every field checked (``TRAINER_STATE``)."""
    path = Path(path)
    fix = f"delete {path.parent} and train again without --resume (or into a new --out)"
    state = read_json(path, fix)
    if not isinstance(state, dict) or not {"step", "config", "param_groups", "log"} <= set(state):
        raise StylecraftError(f"{path} is not a trainer state (step, config, param_groups, log); {fix}")
    try:
        check_fields(state, TRAINER_STATE)
        for group in state["param_groups"]:
            list_of(integer())("param_groups[].params", group.get("params"))
    except StylecraftError as err:
        raise StylecraftError(f"{path} is corrupt ({err}); {fix}") from None
    return state


def read_text(path: str | Path, what: str) -> str:
    """A UTF-8 text file (a prompts file, ...); one error naming the file if it is missing or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise StylecraftError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise StylecraftError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8 and run again"
        ) from None


def check_finite(state: dict, what: str, fix: str) -> None:
    """Refuse weights holding inf or NaN before they are written or used; names the first bad tensor."""
    import torch

    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise StylecraftError(f"{what} holds non-finite values in {key}; {fix}")


def check_device(device: Any):
    """A torch device this machine has: 'cpu', 'cuda', 'cuda:1', 'mps', ... Returns the ``torch.device``."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise StylecraftError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise StylecraftError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise StylecraftError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise StylecraftError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif parsed.type != "cpu":
        raise StylecraftError(f"--device {device}: stylecraft runs on cpu, cuda or mps")
    return parsed
