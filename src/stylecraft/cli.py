"""The ``stylecraft`` command line. ``main(argv)`` parses and dispatches; the work happens in the library.

Heavy imports (torch, diffusers) happen inside each command so ``stylecraft --help`` is instant. Every user error is
printed as one ``error:`` line with exit code 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

MODEL_HELP = "hub id, local aMUSEd-layout folder, or built-in name (default: the shapes world model 'shapes')"


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights dtype (default float32)"
    )


def _add_out(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--out", required=required, help="output folder (must be new or empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder when done")


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-images", type=int, default=4, help="images per prompt (default 4)")
    parser.add_argument("--steps", type=int, default=12, help="decoding steps (default 12; the paper uses 36)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (Muse Eq. 1; default: the model's, 2 for shapes, 10 for aMUSEd)",
    )
    parser.add_argument(
        "--lambda-a",
        type=float,
        default=None,
        help="StyleDrop Eq. 4 style guidance λA with --adapter (default: the model's, 0.5 for shapes, 0 otherwise)",
    )
    parser.add_argument("--lambda-b", type=float, default=None, help="StyleDrop Eq. 4 text guidance λB (= guidance-1)")
    parser.add_argument("--temperature", type=float, nargs="+", default=[2.0, 0.0], help="start [end] (default 2 0)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default: empty)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch.Generator('cpu') (default 0)")


def _configure_instantstyle(parser: argparse.ArgumentParser) -> None:
    """Options of ``stylecraft instantstyle`` (InstantStyle, arXiv 2404.02733)."""
    parser.add_argument(
        "--model",
        default=None,
        help="SD 1.5 / SDXL hub id or diffusers folder (default: the shapes world's shapes-sd, when installed)",
    )
    parser.add_argument(
        "--ip-adapter",
        default=None,
        help="IP-Adapter repo id or folder (default: the one the model folder declares, else h94/IP-Adapter)",
    )
    parser.add_argument(
        "--ip-adapter-weight",
        default=None,
        help="weights file inside --ip-adapter (default: the model folder's, else "
        "sdxl_models/ip-adapter_sdxl.safetensors for SDXL, models/ip-adapter_sd15.safetensors for SD 1.5)",
    )
    parser.add_argument("--image-encoder", default=None, help="CLIP vision folder or subfolder (image_encoder)")
    style = parser.add_mutually_exclusive_group(required=True)
    style.add_argument("--style-image", nargs="+", default=None, help="style reference image(s); several: averaged")
    style.add_argument("--style-embeds", default=None, help="precomputed embedding (a run's inputs/style_embeds.*)")
    parser.add_argument(
        "--style-weights", type=float, nargs="+", default=None, help="one weight per --style-image (default equal)"
    )
    parser.add_argument("--prompt", required=True, help="what to draw")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default: none)")
    parser.add_argument("--scale", type=float, default=1.0, help="IP-Adapter scale in the chosen blocks (default 1.0)")
    parser.add_argument(
        "--blocks",
        default="style",
        help="style | style+layout | all, or comma-separated keys like up_blocks.0.attentions.1 (default style)",
    )
    parser.add_argument(
        "--precise",
        action="store_true",
        help="precise style transfer: the layout blocks take the style image as the negative (needs --guidance > 1)",
    )
    parser.add_argument("--content-prompt", default=None, help="content of the style image to subtract, e.g. 'a cat'")
    parser.add_argument("--subtract", type=float, default=None, help="strength (default 0.5 SDXL bigG, 0.8 ViT-H)")
    parser.add_argument(
        "--content-text-encoder",
        default=None,
        help="CLIP text tower matching a ViT-H image encoder (default: the model folder's, if it declares one)",
    )
    parser.add_argument("--content-image", default=None, help="keep this image's layout (canny ControlNet)")
    parser.add_argument(
        "--controlnet",
        default=None,
        help="canny ControlNet (default: the model folder's, else diffusers/controlnet-canny-sdxl-1.0 or "
        "lllyasviel/sd-controlnet-canny)",
    )
    parser.add_argument("--controlnet-scale", type=float, default=0.6, help="conditioning scale (default 0.6)")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    parser.add_argument("--num-images", type=int, default=4, help="images to generate (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of torch.Generator('cpu') (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights dtype (default float32)"
    )
    _add_out(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylecraft", description="Draw in the style of one reference image.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or warnings")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("sample", help="generate images, optionally with StyleDrop adapters")
    _add_model(p)
    p.add_argument("--prompt", action="append", required=True, help="prompt (repeat for several)")
    p.add_argument("--adapter", default=None, help="adapter folder (StyleDrop guidance Eq. 4)")
    p.add_argument("--style-adapter", default=None, help="style adapter folder for two-adapter sampling (Eq. 5-6)")
    p.add_argument("--content-adapter", default=None, help="content adapter folder for two-adapter sampling")
    p.add_argument(
        "--compose",
        default="stack",
        choices=["stack", "mix"],
        help="two adapters: stack (both in one forward, the default: docs/two-adapters.md) or mix (Eq. 5-6 with γ)",
    )
    p.add_argument("--gamma", type=float, default=0.5, help="content weight γ of Eq. 5-6 (default 0.5)")
    p.add_argument("--gamma-end", type=float, default=None, help="Eq. 5-6 γ at the last step, linear from --gamma")
    p.add_argument("--style-descriptor", default=None, help="phrase removed from the prompt for the content adapter")
    _add_sampling(p)
    _add_out(p)

    p = commands.add_parser("train", help="train a StyleDrop adapter (or LoRA) on style image(s)")
    _add_model(p)
    p.add_argument("--image", action="append", required=True, help="training image (repeat for several)")
    p.add_argument("--prompt", action="append", required=True, help="its prompt (one, or one per image)")
    p.add_argument(
        "--recipe",
        default=None,
        help="recipe name (round1, round2, lora, shapes-round1, ...) or JSON file (default: round1, or lora with "
        "--adapter lora; the shapes model's own versions, shapes-*, on it)",
    )
    p.add_argument(
        "--adapter",
        choices=["styledrop", "lora", "full"],
        default=None,
        help="adapter type (full = fine-tune the transformer)",
    )
    p.add_argument("--rank", type=int, default=None, help="bottleneck d_prj (styledrop) or LoRA rank")
    p.add_argument("--shared", action=argparse.BooleanOptionalAction, default=None, help="factorised sharing")
    p.add_argument("--steps", type=int, default=None, help="training steps")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="batch size")
    p.add_argument("--sample-every", type=int, default=None, help="write a sample grid every N steps (0 = never)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="save a resumable checkpoint every N steps")
    p.add_argument("--seed", type=int, default=None, help="training seed")
    p.add_argument(
        "--shift", type=int, default=None, help="augmentation: move the image by up to N whole VQ tokens (0 = off)"
    )
    p.add_argument(
        "--content",
        action="store_true",
        help="a content adapter, DreamBooth's way: --prompt names the object with a rare token ('a sks glyph'); "
        "class-prior preservation keeps what the base draws for --class-prompt (default recipe: the model's)",
    )
    p.add_argument("--class-prompt", default=None, help="with --content: --prompt without the rare token ('a glyph')")
    p.add_argument("--num-class-images", type=int, default=None, help="with --content: prior images the base draws")
    p.add_argument(
        "--lambda-prior", type=float, default=None, help="with --content: prior term weight, DreamBooth Eq. 2 (0 = off)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no", help="accelerate precision")
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing finished adapter folder")

    p = commands.add_parser("feedback", help="StyleDrop Round 2: candidates from an adapter, selection, retraining")
    _add_model(p)
    p.add_argument("--adapter", required=True, help="the Round-1 (or previous round's) adapter folder")
    p.add_argument("--style", required=True, help="style descriptor appended to each prompt, e.g. 'watercolor'")
    p.add_argument("--prompts", default=None, help="file with one prompt per line (default: the built-in list)")
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first P prompts")
    p.add_argument(
        "--per-prompt",
        type=int,
        default=None,
        help="candidates K per prompt (default 8, or the round's own on a rerun; paper 64)",
    )
    p.add_argument("--select", choices=["clip", "random", "human"], default="clip", help="selection (default clip)")
    p.add_argument(
        "--recipe",
        default=None,
        help="Round-2 training recipe (default round2; shapes-round2-head on the shapes model)",
    )
    p.add_argument("--train-steps", type=int, default=None, help="Round-2 training steps (default: the recipe's)")
    p.add_argument("--no-train", action="store_true", help="stop after generating, scoring and selecting")
    p.add_argument("--steps", type=int, default=12, help="decoding steps of the candidates (default 12)")
    p.add_argument(
        "--guidance", type=float, default=None, help="CFG scale of the candidates (default: the model's, 2 or 10)"
    )
    p.add_argument(
        "--lambda-a", type=float, default=None, help="StyleDrop λA of the candidates (default: the model's, 0.5 or 0)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of candidates and random selection")
    p.add_argument("--clip", default=None, help="CLIPModel for the scores (default: the shapes world's mini CLIP)")
    p.add_argument("--out", required=True, help="the round folder (rerun the same command to resume)")

    p = commands.add_parser("score", help="CLIP text and style scores of a folder of images (JSON on stdout)")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--prompt", required=True, help="prompt to score against")
    p.add_argument("--style-image", default=None, help="reference image for the style score")
    p.add_argument("--clip", default=None, help="CLIPModel hub id or folder (default: the shapes world's mini CLIP)")
    p.add_argument("--device", default="cpu", help="torch device")

    p = commands.add_parser(
        "instantstyle",
        help="tuning-free style transfer on SD 1.5 / SDXL with IP-Adapter (instantstyle probe: which blocks)",
    )
    _configure_instantstyle(p)

    p = commands.add_parser("demo", help="the main job on the embedded default: train, sample, report")
    _add_out(p, required=False)
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo recipe)")

    p = commands.add_parser("eval", help="StyleDrop Table 2 in the shapes world: methods x held-out styles")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--style", action="append", default=None, help="style to evaluate (repeat; default: held-out)")
    p.add_argument("--method", action="append", default=None, help="method (repeat; default: all of them)")
    p.add_argument("--num-images", type=int, default=16, help="images per prompt (default 16)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: each recipe's)")
    _add_out(p)

    p = commands.add_parser("ui", help="feedback studio: pick Round-2 images on a local web page, then train")
    p.add_argument("--round", required=True, help="round folder (stylecraft feedback ... --select human --no-train)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one; the URL is printed)")
    p.add_argument("--target", type=int, default=None, help="picks to aim for (default: the saved target, else 10)")
    p.add_argument("--model", default=None, help="base model for Round 2 (default: the round's, from round.json)")
    p.add_argument("--device", default="cpu", help="torch device for Round 2, e.g. cpu or cuda (default: cpu)")
    p.add_argument(
        "--recipe",
        default=None,
        help="Round-2 training recipe (default round2; shapes-round2-head on the shapes model)",
    )
    p.add_argument("--train-steps", type=int, default=None, help="Round-2 training steps (default: the recipe's)")
    p.add_argument("--open", action="store_true", help="also open the page in the default browser")

    p = commands.add_parser("eval-feedback", help="Round 1 vs Round 2 (clip / random / oracle picks), shapes world")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--style", action="append", default=None, help="style to evaluate (repeat; default: held-out)")
    p.add_argument("--per-prompt", type=int, default=8, help="candidates per feedback prompt (default 8)")
    p.add_argument("--num-images", type=int, default=16, help="evaluation images per prompt (default 16)")
    p.add_argument(
        "--repeats", type=int, default=1, help="Round 2 repeats, each on candidates of another seed (default 1)"
    )
    p.add_argument("--steps", type=int, default=None, help="training steps of both rounds (default: recipes')")
    _add_out(p)

    p = commands.add_parser("compare-methods", help="StyleDrop vs InstantStyle on held-out style families, one table")
    importlib.import_module("stylecraft.compare").configure(p)

    p = commands.add_parser("eval-two-adapters", help="content adapter (a new glyph) + style adapter, every route")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--style", action="append", default=None, help="style to evaluate (repeat; default: held-out)")
    p.add_argument(
        "--content-style",
        action="append",
        default=None,
        help="style of the glyph renders the content adapter learns from (repeat; default: 8 seen styles)",
    )
    p.add_argument("--gamma", type=float, action="append", default=None, help="Eq. 5-6 γ (repeat; default 0.3 0.5 0.7)")
    p.add_argument("--num-images", type=int, default=32, help="images per row (default 32)")
    p.add_argument("--steps", type=int, default=None, help="training steps of both adapters (default: recipe's)")
    p.add_argument(
        "--content-recipe",
        default="shapes-dreambooth",
        help="content adapter recipe (default shapes-dreambooth; one with lambda_prior > 0 trains with class-prior "
        "preservation)",
    )
    _add_out(p)

    p = commands.add_parser("eval-content", help="content adapters (DreamBooth) on a new glyph, with and without prior")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--recipe", action="append", default=None, help="candidate recipe (repeat; default: the four)")
    p.add_argument(
        "--lambda-prior", type=float, action="append", default=None, help="prior term weight (repeat; default 0 1)"
    )
    p.add_argument("--num-images", type=int, default=32, help="images per cell (default 32)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: each recipe's)")
    _add_out(p)

    p = commands.add_parser(
        "world", help="the shapes world: world pretrain oracles|glyph|vq|clip|muse|ship ..., world styles ..."
    )
    p.add_argument(
        "action",
        choices=["pretrain", "styles"],
        help="pretrain: train one model from its recipe, or ship runs; styles: print and draw a sample of the "
        "style space",
    )
    p.add_argument(
        "args", nargs=argparse.REMAINDER, help="its arguments (stylecraft world pretrain|styles --help; the model card)"
    )

    commands.add_parser("env", help="print versions and devices (for bug reports)")
    return parser


RUNNERS = {
    "sample": "stylecraft.api:run_sample_cli",
    "train": "stylecraft.api:run_train_cli",
    "score": "stylecraft.scoring:run_cli",
    "feedback": "stylecraft.feedback:run_cli",
    "instantstyle": "stylecraft.instantstyle:run_cli",
    "instantstyle-probe": "stylecraft.probe:run_cli",
    "compare-methods": "stylecraft.compare:run_cli",
    "demo": "stylecraft.demo:run_cli",
    "eval": "stylecraft.evaluation:run_cli",
    "eval-feedback": "stylecraft.evaluation:run_feedback_cli",
    "eval-two-adapters": "stylecraft.evaluation:run_two_adapter_cli",
    "eval-content": "stylecraft.eval_content:run_cli",
    "ui": "stylecraft.ui:run_cli",
    "world": "stylecraft.world.pretrain:run_cli",
    "env": "stylecraft.cli:run_env",
}


def run_env(args: argparse.Namespace) -> int:
    import platform

    import torch

    print(f"python {platform.python_version()} on {platform.platform()}")
    for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors"):
        print(f"{name} {importlib.import_module(name).__version__}")
    print(f"cuda available: {torch.cuda.is_available()}; threads: {torch.get_num_threads()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))  # the command, after --debug
    if argv[at : at + 2] == ["instantstyle", "probe"]:  # a parser of its own: instantstyle's required flags differ
        parser, argv = importlib.import_module("stylecraft.probe").build_parser(), argv[:at] + argv[at + 2 :]
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars for local files
    logging.basicConfig(format="%(levelname)s: %(message)s", level=logging.ERROR if args.quiet else logging.WARNING)
    if args.quiet:
        os.environ["STYLECRAFT_QUIET"] = "1"
    if os.environ.get("STYLECRAFT_QUIET") == "1":
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # their "Loading weights" bars too
        transformers_logging.disable_progress_bar()
    module_name, function_name = RUNNERS[args.command].split(":")
    try:
        from .validation import check_args

        check_args(args)  # every numeric flag, seed and device, before any work
        run = getattr(importlib.import_module(module_name), function_name)
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the one place every error becomes a one-line message
        if args.debug:
            raise
        from .errors import StylecraftError

        kind = "error" if isinstance(err, StylecraftError) else f"error ({err.__class__.__name__})"
        message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        print(f"{kind}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
