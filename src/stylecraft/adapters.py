"""Adapters on a Muse transformer: StyleDrop's bottleneck adapter and peft LoRA, several per base, routed per row.

StyleDrop (Sohn et al. 2023, §3.1 and Appendix) puts two serial bottleneck adapters in every transformer layer,
one after the cross-attention block and one after the MLP block, each ``x + up(gelu(down(x)))`` on that block's
output (Houlsby-style), no bias, ``up`` zero-initialised so a fresh adapter changes nothing. With ``shared`` the
layers share one D×H ``down`` and one H×D ``up`` matrix and keep only per-layer offsets (an H-vector after ``down``
and a D-vector after ``up``), which is how Round 1 stays tiny.

``extra_sites`` (not in the paper) puts the same bottleneck, with its own unshared weights, on the output of further
modules named by their path in the transformer, e.g. the up block and the head after the transformer layers, where
a small model such as the shapes world's decides texture (docs/shapes-experiments.md).

``AdaptedTransformer`` holds one frozen base transformer and any number of named adapters, and applies a different
adapter to each row of a batch (``rows=["style", None, None]``). That is what lets StyleDrop guidance (Eq. 4) and
two-adapter sampling (Eq. 5-6) run all their passes in one batched forward without copying the base model.
"""

from __future__ import annotations

import itertools
import logging
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from .errors import StylecraftError
from .muse import MuseModel
from .validation import ADAPTER_CONFIG, check_fields, check_finite, read_json

logger = logging.getLogger("stylecraft")
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_TYPES = ("styledrop", "lora", "full")  # "full": the whole transformer (a baseline)
# StyleDrop's two adapter sites in each transformer layer (diffusers' BasicTransformerBlock submodule names).
STYLEDROP_SITES = ("attn2", "ff")
# peft names of LoRA adapters, unique per process: a LoRA lives inside the base model's layers, and wrappers that
# share one base (the Python API, the feedback page) may each call theirs "adapter". A count, not a generator: next()
# on itertools.count is safe from several threads (the feedback page trains in one of its own).
_PEFT_COUNT = itertools.count()


@dataclass
class AdapterConfig:
    """Everything needed to rebuild an adapter and check it belongs to its base model."""

    adapter_type: str = "styledrop"  # "styledrop" (the paper's adapter), "lora" (peft) or "full" (fine-tuning)
    rank: int = 4  # bottleneck width d_prj for styledrop, r for LoRA
    shared: bool = False  # styledrop only: factorised sharing across layers (paper's is_shared)
    lora_alpha: int | None = None  # LoRA scaling numerator (default: rank, i.e. scale 1)
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v"])  # LoRA targets
    extra_sites: list[str] = field(default_factory=list)  # styledrop: more modules (paths) with an adapter each
    base_model: str = ""  # the base model's id / folder / built-in name
    base_fingerprint: str = ""  # MuseModel.fingerprint of that base (its architecture)
    base_weights: str = ""  # MuseModel.weights_fingerprint of that base (its token embeddings and VQ codebook)
    num_layers: int = 0  # transformer layers of the base
    hidden_size: int = 0  # transformer width D of the base
    token_grid: int = 0  # side of the base's token grid (8: 64 px through an 8x VQ); 0: not recorded (older adapters)
    prompts: list[str] = field(default_factory=list)  # training prompts
    training: dict = field(default_factory=dict)  # resolved training settings

    def __post_init__(self) -> None:
        check_fields(vars(self), ADAPTER_CONFIG)  # types and sizes: "shared": "no" is not true, rank 10**9 is absurd
        if self.adapter_type not in ADAPTER_TYPES:
            raise StylecraftError(f"unknown adapter type {self.adapter_type!r}; use one of {', '.join(ADAPTER_TYPES)}")
        if self.shared and self.adapter_type != "styledrop":
            raise StylecraftError("--shared applies to the styledrop adapter only")
        if self.extra_sites and self.adapter_type != "styledrop":
            raise StylecraftError("extra_sites applies to the styledrop adapter only; LoRA takes target_modules")


class StyleDropAdapter(nn.Module):
    """Bottleneck adapters for every (layer, site): ``x + up(gelu(down(x)))``. Weights are stacked tensors."""

    def __init__(
        self, num_layers: int, hidden_size: int, rank: int, shared: bool = False, extra: dict[str, int] | None = None
    ):
        super().__init__()
        self.num_layers, self.hidden_size, self.rank, self.shared = num_layers, hidden_size, rank, shared
        # One unshared [C, H] down and [H, C] up per extra site (path -> its output width C).
        self.extra_index = {path: i for i, path in enumerate(extra or {})}
        self.extra_down = nn.ParameterList([nn.Parameter(torch.empty(c, rank)) for c in (extra or {}).values()])
        self.extra_up = nn.ParameterList([nn.Parameter(torch.zeros(rank, c)) for c in (extra or {}).values()])
        sites = len(STYLEDROP_SITES)
        if shared:
            self.down = nn.Parameter(torch.empty(hidden_size, rank))  # [D, H], one for all layers
            self.up = nn.Parameter(torch.zeros(rank, hidden_size))  # [H, D]
            self.down_offset = nn.Parameter(torch.zeros(num_layers, sites, rank))  # per-layer H offsets
            self.up_offset = nn.Parameter(torch.zeros(num_layers, sites, hidden_size))  # per-layer D offsets
        else:
            self.down = nn.Parameter(torch.empty(num_layers, sites, hidden_size, rank))  # [L, 2, D, H]
            self.up = nn.Parameter(torch.zeros(num_layers, sites, rank, hidden_size))  # [L, 2, H, D]
        # Paper: truncated normal with std 0.02 (cut at two standard deviations, as JAX's initialiser); up stays zero.
        for down in [self.down, *self.extra_down]:
            nn.init.trunc_normal_(down, std=0.02, a=-0.04, b=0.04)

    def delta(self, x: torch.Tensor, layer: int, site: int) -> torch.Tensor:
        """``up(gelu(down(x)))`` for one site. x: [rows, tokens, D] -> [rows, tokens, D]."""
        if self.shared:
            hidden = F.gelu(x @ self.down + self.down_offset[layer, site])  # [rows, tokens, H]
            return hidden @ self.up + self.up_offset[layer, site]
        return F.gelu(x @ self.down[layer, site]) @ self.up[layer, site]

    def extra_delta(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """``up(gelu(down(x)))`` over the last dimension of an extra site's output (channels last)."""
        i = self.extra_index[path]
        return F.gelu(x @ self.extra_down[i]) @ self.extra_up[i]


def _token_grid(transformer) -> int:
    """The side of the token grid a Muse transformer draws: ``UVit2DModel``'s config ``sample_size`` (aMUSEd 256:
    16; the shapes world's Muse-mini: 8); 0 where a config lacks it."""
    size = getattr(transformer.config, "sample_size", 0)
    return size if isinstance(size, int) else 0


class AdaptedTransformer(nn.Module):
    """A frozen ``UVit2DModel`` plus named adapters; ``rows`` picks the adapter (or None = base) of each row."""

    def __init__(self, muse: MuseModel):
        super().__init__()
        self.transformer = muse.transformer
        self.styledrop = nn.ModuleDict()
        self.peft_names: dict[str, str] = {}  # LoRA adapter name -> its name inside the base model's peft layers
        self.configs: dict[str, AdapterConfig] = {}
        self.base_name, self.base_fingerprint = muse.name, muse.fingerprint
        self.base_weights = muse.weights_fingerprint
        self._rows: list[str | None] | None = None
        # The hooks live on the base transformer, once however many wrappers share it, and act for the wrapper that
        # is routing the current forward (none: they pass the base output through). Hooks bound to each wrapper
        # would pile up on a reused base, and a LoRA layer's single hook would keep serving the first wrapper only.
        if not self.transformer.__dict__.get("_stylecraft_hooked", False):
            for index, layer in enumerate(self.transformer.transformer_layers):
                for site, attribute in enumerate(STYLEDROP_SITES):
                    getattr(layer, attribute).register_forward_hook(
                        partial(_styledrop_hook, self.transformer, index, site)
                    )
            object.__setattr__(self.transformer, "_stylecraft_hooked", True)  # a plain attribute, not a submodule
        # A LoRA lives in the shared base's layers, not in this wrapper: when the wrapper goes, its LoRAs go too, so
        # a base reused for many rounds or samples does not keep every LoRA it ever held.
        self._lora_finalizer = weakref.finalize(self, _delete_loras, self.transformer, self.peft_names)
        self._lora_finalizer.atexit = False

    # ---- adding, saving, loading -------------------------------------------------------------------------
    def new_config(self, adapter_type: str = "styledrop", rank: int = 4, shared: bool = False, **kwargs):
        config = self.transformer.config
        return AdapterConfig(
            adapter_type=adapter_type,
            rank=rank,
            shared=shared,
            base_model=self.base_name,
            base_fingerprint=self.base_fingerprint,
            base_weights=self.base_weights,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            token_grid=_token_grid(self.transformer),
            **kwargs,
        )

    def add_adapter(self, name: str, config: AdapterConfig) -> None:
        """Add a fresh (no-op until trained) adapter called ``name``."""
        if name in self.configs:
            raise StylecraftError(f"an adapter named {name!r} is already loaded; pick another name")
        if name == "__base__":
            raise StylecraftError("'__base__' is reserved for the base model")
        self._check_base(config, name)
        # other wrappers' LoRAs live in the same layers: adding this one (peft re-flags a layer's adapters, and the
        # base is frozen below) must not freeze or unfreeze theirs, e.g. one that is training in another thread
        others = {p: p.requires_grad for n, p in self.transformer.named_parameters() if "lora_" in n}
        if config.adapter_type == "full" and self.configs:
            raise StylecraftError("a fully fine-tuned transformer replaces the base: load it without other adapters")
        if config.adapter_type == "full":
            pass  # the base transformer's own weights are the "adapter"
        elif config.adapter_type == "styledrop":
            extra = {path: _output_width(self._site_module(path), path) for path in config.extra_sites}
            for path in extra:
                self._hook_extra_site(path)
            adapter = StyleDropAdapter(config.num_layers, config.hidden_size, config.rank, config.shared, extra)
            self.styledrop[name] = adapter.to(self.transformer.device, self.transformer.dtype)
        else:
            lora = LoraConfig(
                r=config.rank,
                lora_alpha=config.lora_alpha or config.rank,
                target_modules=config.target_modules,
                init_lora_weights=True,  # B = 0: a fresh LoRA is a no-op like the paper's adapter
            )
            self.peft_names[name] = f"stylecraft{next(_PEFT_COUNT)}"
            inject_adapter_in_model(lora, self.transformer, adapter_name=self.peft_names[name])
            for module in self.transformer.modules():
                if isinstance(module, LoraLayer) and not getattr(module, "_stylecraft_routed", False):
                    module.register_forward_pre_hook(partial(_lora_hook, self.transformer), with_kwargs=True)
                    module._stylecraft_routed = True
        self.configs[name] = config
        self.transformer.requires_grad_(False)
        for parameter, flag in others.items():
            parameter.requires_grad_(flag)
        for parameter in self.adapter_parameters(name):
            parameter.requires_grad_(True)

    def remove_adapter(self, name: str) -> None:
        """Unload adapter ``name`` and free its weights (a LoRA leaves the shared base's layers)."""
        if name not in self.configs:
            raise StylecraftError(f"no adapter named {name!r} is loaded; loaded: {sorted(self.configs)}")
        if self.is_full(name):
            raise StylecraftError(
                "a fully fine-tuned transformer is the base model itself; load the base model again to drop it"
            )
        if name in self.styledrop:
            del self.styledrop[name]
        else:
            _delete_loras(self.transformer, {name: self.peft_names.pop(name)})
        del self.configs[name]

    def _site_module(self, path: str) -> nn.Module:
        try:
            return self.transformer.get_submodule(path)
        except AttributeError:
            raise StylecraftError(
                f"extra adapter site {path!r} is not a module of this transformer; name one of its module paths, "
                "e.g. up_block.res_blocks.0.channelwise_linear_2"
            ) from None

    def _hook_extra_site(self, path: str) -> None:
        """One hook per extra site on the shared base (as the paper's sites), added when an adapter first needs it."""
        hooked = self.transformer.__dict__.setdefault("_stylecraft_extra_hooked", set())
        if path not in hooked:
            module = self._site_module(path)
            module.register_forward_hook(partial(_extra_hook, self.transformer, path, isinstance(module, nn.Conv2d)))
            hooked.add(path)

    def _check_base(self, config: AdapterConfig, name: str) -> None:
        # the architecture itself, before any weights are allocated: a blanked fingerprint must not get past it
        layers, width = self.transformer.config.num_hidden_layers, self.transformer.config.hidden_size
        if (config.num_layers, config.hidden_size) != (layers, width):
            raise StylecraftError(
                f"adapter {name!r} is for a transformer of {config.num_layers} layers of width {config.hidden_size}, "
                f"but this model's has {layers} of width {width}; load it with the model it was trained on "
                f"(--model {config.base_model})"
            )
        grid = _token_grid(self.transformer)
        if config.token_grid and grid and config.token_grid != grid:
            # its layers may fit, but what it learned is where things are on another grid of image tokens
            raise StylecraftError(
                f"adapter {name!r} was trained on a {config.token_grid}x{config.token_grid} token grid "
                f"({config.base_model!r}), but this model draws {grid}x{grid} tokens; load it with --model "
                f"{config.base_model}, or train it again on this model"
            )
        if config.base_fingerprint and config.base_fingerprint != self.base_fingerprint:
            raise StylecraftError(
                f"adapter {name!r} was trained on base model {config.base_model!r} (fingerprint "
                f"{config.base_fingerprint}), but this model is {self.base_name!r} ({self.base_fingerprint}); "
                f"load it with --model {config.base_model}"
            )
        if config.base_weights and config.base_weights != self.base_weights:
            logger.warning(
                "adapter %r was trained on other weights of this architecture (%s, weights %s; this model's are %s), "
                "e.g. an earlier release of the shapes model: its samples will not be what it was trained to draw. "
                "Train it again on this model",
                name,
                config.base_model,
                config.base_weights,
                self.base_weights,
            )

    def is_full(self, name: str) -> bool:
        return self.configs[name].adapter_type == "full"

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        if self.is_full(name):
            return list(self.transformer.parameters())
        if name in self.styledrop:
            return list(self.styledrop[name].parameters())
        peft_name = self.peft_names[name]
        return [p for n, p in self.transformer.named_parameters() if f".{peft_name}." in n and "lora_" in n]

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        if self.is_full(name):
            state = self.transformer.state_dict()
        elif name in self.styledrop:
            state = self.styledrop[name].state_dict()
        else:
            state = get_peft_model_state_dict(self.transformer, adapter_name=self.peft_names[name])
        return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor]) -> None:
        expected = self.adapter_state_dict(name)
        problems = sorted(set(expected) ^ set(state))
        problems += [k for k in expected if k in state and expected[k].shape != state[k].shape]
        if problems:
            raise StylecraftError(
                f"adapter {name!r} weights do not fit this model (first mismatched key: {problems[0]}); "
                "the file is corrupt or for another architecture"
            )
        if self.is_full(name):
            self.transformer.load_state_dict(state)
        elif name in self.styledrop:
            self.styledrop[name].load_state_dict(state)
        else:
            set_peft_model_state_dict(self.transformer, state, adapter_name=self.peft_names[name])

    def save_adapter(self, name: str, folder: str | Path) -> None:
        """Write ``adapter_model.safetensors`` then ``adapter_config.json`` (written last: it marks completion)."""
        from .io import write_bytes, write_json

        folder = Path(folder)
        state = self.adapter_state_dict(name)
        check_finite(state, f"adapter {name!r}", "lower the learning rate (--lr) or check the training images")
        write_bytes(folder / WEIGHTS_NAME, save(state, metadata={"format": "pt"}))  # a full disk: io's error line
        write_json(folder / CONFIG_NAME, asdict(self.configs[name]))

    def load_adapter(self, folder: str | Path, name: str | None = None) -> str:
        """Load an adapter folder under ``name`` (default: the folder's name); returns the name used."""
        config, state = read_adapter(folder)
        name = name or Path(folder).resolve().name
        self._check_base(config, name)
        self.add_adapter(name, config)
        self.load_adapter_state_dict(name, state)
        for parameter in self.adapter_parameters(name):
            parameter.requires_grad_(False)
        return name

    # ---- routing ------------------------------------------------------------------------------------------
    @contextmanager
    def route(self, rows: list[str | None]) -> Iterator[None]:
        """Within the block, row i of every forward uses adapter ``rows[i]`` (None: the base model alone)."""
        unknown = {r for r in rows if r is not None and r not in self.configs}
        if unknown:
            raise StylecraftError(f"no adapter named {sorted(unknown)[0]!r} is loaded; loaded: {sorted(self.configs)}")
        if any(self.is_full(name) for name in self.configs) and None in rows:
            raise StylecraftError(
                "a fully fine-tuned transformer has no base model left for guidance terms; sample it with plain CFG"
            )
        previous = self.transformer.__dict__.get("_stylecraft_router")
        object.__setattr__(self.transformer, "_stylecraft_router", self)
        self._rows = list(rows)
        try:
            yield
        finally:
            self._rows = None
            object.__setattr__(self.transformer, "_stylecraft_router", previous)

    def _lora_names(self, batch: int) -> list[str]:
        """The peft LoRA of each row of a forward ("__base__": none); outside a routed forward every row is the base."""
        rows = self._rows or [None] * batch
        return [self.peft_names.get(r, "__base__") if r is not None else "__base__" for r in rows]

    def _add_styledrop(self, layer: int, site: int, output: torch.Tensor) -> torch.Tensor:
        return self._add_routed(output, lambda adapter, x: adapter.delta(x, layer, site))

    def _add_extra(self, path: str, output: torch.Tensor, channels_first: bool) -> torch.Tensor:
        if not self._rows or not self.styledrop:
            return output
        x = output.movedim(1, -1) if channels_first else output
        x = self._add_routed(
            x, lambda adapter, rows: adapter.extra_delta(rows, path), lambda adapter: path in adapter.extra_index
        )
        return x.movedim(-1, 1) if channels_first else x

    def _add_routed(self, output: torch.Tensor, delta, applies=lambda adapter: True) -> torch.Tensor:
        """``output`` plus ``delta(adapter, rows)`` on the rows routed to each StyleDrop adapter that ``applies``."""
        if not self._rows or not self.styledrop:
            return output
        rows = self._rows
        if len(rows) != output.shape[0]:
            raise ValueError(f"routing has {len(rows)} rows but the batch has {output.shape[0]}")
        for name, adapter in self.styledrop.items():
            selected = [i for i, r in enumerate(rows) if r == name]
            if not selected or not applies(adapter):
                continue
            if len(selected) == len(rows):
                output = output + delta(adapter, output)
            else:
                index = torch.tensor(selected, device=output.device)
                output = output.index_add(0, index, delta(adapter, output[index]))
        return output

    def forward(self, rows: list[str | None], *args, **kwargs) -> torch.Tensor:
        """The base transformer's forward with per-row adapters."""
        with self.route(rows):
            return self.transformer(*args, **kwargs)


def _router(transformer: nn.Module) -> AdaptedTransformer | None:
    """The wrapper routing the forward that ``transformer`` is running now (None outside ``route``)."""
    return transformer.__dict__.get("_stylecraft_router")


def _styledrop_hook(transformer, layer: int, site: int, module, args, output: torch.Tensor) -> torch.Tensor:
    router = _router(transformer)
    return output if router is None else router._add_styledrop(layer, site, output)


def _extra_hook(transformer, path: str, channels_first: bool, module, args, output: torch.Tensor) -> torch.Tensor:
    router = _router(transformer)
    return output if router is None else router._add_extra(path, output, channels_first)


def _output_width(module: nn.Module, path: str) -> int:
    """The channel count of a module's output: a Linear's out_features, a Conv2d's out_channels, an attention's."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    to_out = getattr(module, "to_out", None)  # diffusers' Attention
    if isinstance(to_out, nn.ModuleList) and isinstance(to_out[0], nn.Linear):
        return to_out[0].out_features
    raise StylecraftError(
        f"extra adapter site {path!r} is a {type(module).__name__}; name a Linear, Conv2d or attention module"
    )


def _delete_loras(transformer: nn.Module, peft_names: dict[str, str]) -> None:
    """Delete the peft LoRAs ``peft_names`` (values) from every LoRA layer of ``transformer``."""
    for peft_name in list(peft_names.values()):
        for module in transformer.modules():
            if isinstance(module, LoraLayer) and peft_name in module.lora_A:
                # our hook sets the active adapter per forward; clearing it first keeps peft from promoting (and
                # unfreezing) another wrapper's LoRA in its place
                module._active_adapter = []
                module.delete_adapter(peft_name)
    peft_names.clear()


def _lora_hook(transformer, module, args, kwargs):
    # A batch with one choice for every row takes peft's ordinary path (no per-row copies: training, plain
    # sampling); a mixed batch takes peft's mixed-batch ``adapter_names`` path. Outside a routed forward every row
    # is "__base__", so the plain transformer stays the base model.
    router = _router(transformer)
    names = router._lora_names(args[0].shape[0]) if router else ["__base__"] * args[0].shape[0]
    if len(set(names)) == 1:
        module._disable_adapters = names[0] == "__base__"
        if names[0] != "__base__":
            module._active_adapter = [names[0]]
        return args, kwargs
    module._disable_adapters = False
    kwargs["adapter_names"] = names
    return args, kwargs


def read_adapter(folder: str | Path) -> tuple[AdapterConfig, dict[str, torch.Tensor]]:
    """Read and validate an adapter folder; every problem is a StylecraftError naming the file and the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StylecraftError(f"adapter folder not found: {folder}")
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise StylecraftError(
                f"adapter folder {folder} has no {path.name}; it is unfinished or was not copied fully"
            )
    fix = "retrain or copy the adapter again"
    raw = read_json(config_path, fix)
    if not isinstance(raw, dict):
        raise StylecraftError(f"{config_path} is corrupt (not a JSON object); {fix}")
    known = AdapterConfig.__dataclass_fields__
    try:
        config = AdapterConfig(**{k: v for k, v in raw.items() if k in known})
    except StylecraftError as err:
        raise StylecraftError(f"{config_path} is corrupt ({err}); {fix}") from None
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise StylecraftError(f"{weights_path} is corrupt ({err}); retrain or copy the adapter again") from None
    check_finite(state, str(weights_path), "retrain the adapter")
    return config, state


def count_parameters(module: nn.Module | list[nn.Parameter]) -> int:
    parameters = module.parameters() if isinstance(module, nn.Module) else module
    return sum(math.prod(p.shape) for p in parameters)
