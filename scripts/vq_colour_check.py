"""Does an autoencoder architecture keep colour? Train it briefly (no quantization) and ask the oracles.

The check that found why the shapes world's first VQ tokenizer drew grey shapes (docs/world.md, "The VQ
tokenizer"). Each architecture trains as a plain autoencoder (MSE, Adam, batch 16) on fresh renders, then the
oracles read shape and colour off reconstructions of 256 evaluation renders:

    python scripts/vq_colour_check.py diffusers --steps 400 --lr 2e-3        # diffusers' VQModel Encoder/Decoder
    python scripts/vq_colour_check.py diffusers --groups 1                   # ... with norm_num_groups=1
    python scripts/vq_colour_check.py world --default-init                   # WorldVQModel, PyTorch's default init
    python scripts/vq_colour_check.py world                                  # WorldVQModel as shipped (He init)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def build(kind: str, groups: int | None, default_init: bool):
    from diffusers import VQModel

    from stylecraft.world.pretrain import RECIPES
    from stylecraft.world.vq import WorldVQModel

    if kind == "diffusers":  # the configuration the first shipped VQ used
        config = {
            "in_channels": 3, "out_channels": 3, "latent_channels": 32, "num_vq_embeddings": 512,
            "block_out_channels": [16, 32, 64, 128], "layers_per_block": 1, "norm_num_groups": groups or 8,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "mid_block_add_attention": False, "lookup_from_codebook": True,
        }  # fmt: skip
        return VQModel(**config)
    model = WorldVQModel(**json.loads(RECIPES.read_text())["vq"]["model"])
    if default_init:  # undo the He init: PyTorch's default conv init everywhere but the zero-initialised convs
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and not getattr(module, "zero_init", False):
                module.reset_parameters()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["diffusers", "world"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--groups", type=int, default=None, help="diffusers: norm_num_groups (default 8)")
    parser.add_argument("--default-init", action="store_true", help="world: PyTorch's default conv init")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from stylecraft.world import renderer
    from stylecraft.world.oracles import load_oracles, oracle_accuracy
    from stylecraft.world.pretrain import EVAL_SEED, to_tensor

    torch.manual_seed(0)
    model = build(args.kind, args.groups, args.default_init)

    def autoencode(x):
        return model.decoder(model.post_quant_conv(model.encode(x).latents))

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data, started = renderer.stream(16, 0), time.time()
    for _ in range(args.steps):
        x = to_tensor(next(data)[0])
        loss = F.mse_loss(autoencode(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, scenes = renderer.render_batch(256, EVAL_SEED)
    with torch.no_grad():
        reconstructions = autoencode(to_tensor(images)).clamp(0, 1)
    accuracy = oracle_accuracy(load_oracles(), reconstructions, scenes.labels())
    print(json.dumps({**vars(args), "final_loss": round(loss.item(), 4), "seconds": round(time.time() - started),
                      "reconstruction_accuracy": {k: round(v, 3) for k, v in accuracy.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
