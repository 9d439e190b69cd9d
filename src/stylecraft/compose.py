"""Composing a content adapter (an object, DreamBooth) with a style adapter (StyleDrop): one adapter from two.

StyleDrop §4.4 composes the two at sampling time, mixing the logits of two guided forwards (Eq. 5-6,
``sampling.sample_tokens``). This module builds the other route of issue #30: both adapters active in one forward
("stacked"), on the prompt that names the object and the style.

The paper's bottleneck adapter adds ``up(gelu(down(x)))`` after a site. Two adapters on the same site, each given a
strength w, add ``w_s · up_s(gelu(down_s(x))) + w_c · up_c(gelu(down_c(x)))``. That sum IS one bottleneck adapter
of width d_s + d_c: ``down = [down_s | down_c]``, ``up = [w_s · up_s ; w_c · up_c]`` (gelu acts per unit, so the
two halves never meet). The shared form's offsets join the same way: the ``down`` offsets side by side, the ``up``
offsets summed with their strengths. ``stack_adapters`` writes that adapter into the ``AdaptedTransformer``, so the
ordinary routed forward (and StyleDrop guidance, Eq. 4, against the base) samples the stack unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .adapters import AdaptedTransformer
from .errors import StylecraftError

COMPOSE_ROUTES = ("stack", "mix")  # both adapters in one forward; StyleDrop Eq. 5-6 (γ, or γ scheduled)


@torch.no_grad()
def stack_adapters(model: AdaptedTransformer, strengths: dict[str, float], name: str = "stacked") -> str:
    """Add to ``model`` an adapter ``name`` whose output at every site is Σ strength · (that adapter's output), for
    the loaded StyleDrop adapters named in ``strengths`` (module docstring); returns ``name``."""
    if len(strengths) < 2:
        raise StylecraftError("stacking needs two adapters or more, e.g. the style adapter and the content adapter")
    configs = [model.configs[n] for n in strengths]
    if any(c.adapter_type != "styledrop" for c in configs) or len({c.shared for c in configs}) > 1:
        kinds = ", ".join(
            f"{n}: {c.adapter_type}{' shared' if c.shared else ''}" for n, c in zip(strengths, configs, strict=True)
        )
        raise StylecraftError(
            f"only StyleDrop adapters of one form (all shared or all unshared) can be stacked; got {kinds}. "
            "Use --compose mix for other pairs"
        )
    parts = [(model.styledrop[n], w) for n, w in strengths.items()]
    sites = list(dict.fromkeys(path for c in configs for path in c.extra_sites))
    config = replace(configs[0], rank=sum(c.rank for c in configs), extra_sites=sites, prompts=[], training={})
    model.add_adapter(name, config)
    stacked = model.styledrop[name]
    stacked.down.copy_(torch.cat([a.down for a, _ in parts], dim=-1))  # [..., D, Σd]
    stacked.up.copy_(torch.cat([w * a.up for a, w in parts], dim=-2))  # [..., Σd, D]
    if config.shared:
        stacked.down_offset.copy_(torch.cat([a.down_offset for a, _ in parts], dim=-1))  # [L, 2, Σd]
        stacked.up_offset.copy_(sum(w * a.up_offset for a, w in parts))  # [L, 2, D]
    for i, path in enumerate(sites):  # an adapter without this site adds nothing there: zero columns
        downs, ups = [], []
        for adapter, w in parts:
            if path in adapter.extra_index:
                k = adapter.extra_index[path]
                downs.append(adapter.extra_down[k])
                ups.append(w * adapter.extra_up[k])
            else:
                width = stacked.extra_down[i].shape[0]
                downs.append(stacked.extra_down[i].new_zeros(width, adapter.rank))
                ups.append(stacked.extra_up[i].new_zeros(adapter.rank, width))
        stacked.extra_down[i].copy_(torch.cat(downs, dim=-1))
        stacked.extra_up[i].copy_(torch.cat(ups, dim=0))
    for parameter in model.adapter_parameters(name):
        parameter.requires_grad_(False)
    return name
