"""Feedback rounds: candidates, scores, selection, resumption, Round-2 training, and round-folder errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stylecraft.cli import main
from stylecraft.errors import StylecraftError
from stylecraft.feedback import (
    SHAPES_WORLD_CONTENT,
    candidate_tokens,
    generate_candidates,
    read_picks,
    read_prompts,
    select,
    tokens_path,
    train_round,
    write_picks,
)
from stylecraft.io import to_pil_images
from stylecraft.muse import load_muse
from stylecraft.sampling import SamplingConfig

PROMPTS = ["a cat in oil style", "a dog in oil style", "a house in oil style"]


def muse_token_shape(muse) -> tuple[int, int]:
    side = muse.resolution // muse.vae_scale_factor
    return side, side


@pytest.fixture(scope="module")
def round1(tiny_muse_dir, style_png, tmp_path_factory):
    folder = tmp_path_factory.mktemp("r1") / "adapter"
    image = style_png
    assert (
        main(
            [
                "--quiet",
                "train",
                "--model",
                str(tiny_muse_dir),
                "--image",
                str(image),
                "--prompt",
                "a red house in oil style",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--out",
                str(folder),
            ]
        )
        == 0
    )
    return folder


def test_candidates_scores_and_clip_selection(tiny_muse_dir, round1, clip_dir, tmp_path):
    muse = load_muse(tiny_muse_dir)
    config = SamplingConfig(steps=2, lambda_a=0.0)
    scores = generate_candidates(
        muse, round1, PROMPTS, tmp_path / "r", "oil", per_prompt=3, config=config, clip=clip_dir, progress=False
    )
    assert len(scores) == 9 and (tmp_path / "r" / "reference.png").is_file()
    assert sorted(p.name for p in (tmp_path / "r" / "candidates").iterdir())[:2] == ["p000_k000.png", "p000_k001.png"]
    picked = select(tmp_path / "r", "clip")
    assert len(picked) == 3
    for p, file in enumerate(picked):  # the best text score of each prompt
        same = {f: s for f, s in scores.items() if s["prompt_index"] == p}
        assert file == max(same, key=lambda f: same[f]["text_score"])
    assert len(set(select(tmp_path / "r", "random", seed=1))) == 3

    # a rerun resumes: nothing regenerated (files untouched), same scores
    stamp = (tmp_path / "r" / "candidates" / "p001_k002.png").stat().st_mtime_ns
    again = generate_candidates(
        muse, round1, PROMPTS, tmp_path / "r", "oil", per_prompt=3, config=config, clip=clip_dir, progress=False
    )
    assert again == scores and (tmp_path / "r" / "candidates" / "p001_k002.png").stat().st_mtime_ns == stamp
    # an interrupted prompt is regenerated identically
    lost = tmp_path / "r" / "candidates" / "p002_k001.png"
    before = np.asarray(Image.open(lost))
    lost.unlink()
    generate_candidates(
        muse, round1, PROMPTS, tmp_path / "r", "oil", per_prompt=3, config=config, clip=clip_dir, progress=False
    )
    assert np.array_equal(np.asarray(Image.open(lost)), before)

    with pytest.raises(StylecraftError, match="other settings"):
        generate_candidates(
            muse, round1, PROMPTS[:2], tmp_path / "r", "oil", per_prompt=3, config=config, clip=clip_dir, progress=False
        )

    # human picks, then Round 2 on them
    with pytest.raises(StylecraftError, match="no human picks"):
        select(tmp_path / "r", "human")
    write_picks(tmp_path / "r", ["p000_k001.png", "p002_k000.png"])
    assert select(tmp_path / "r", "human") == ["p000_k001.png", "p002_k000.png"]
    encoded = []
    encode = muse.encode_images
    muse.encode_images = lambda pixels: encoded.append(len(pixels)) or encode(pixels)
    model = train_round(muse, tmp_path / "r", select(tmp_path / "r", "human"), steps=2, progress=False)
    assert encoded == []  # Round 2 trained on the kept tokens, not on the PNGs encoded again
    config_file = json.loads((tmp_path / "r" / "adapter" / "adapter_config.json").read_text())
    assert config_file["rank"] == 32 and config_file["shared"] is False  # the paper's Round 2
    assert config_file["prompts"] == [PROMPTS[0], PROMPTS[2]] and "adapter" in model.configs
    tokens_path(tmp_path / "r", "p002_k000.png").unlink()  # a round without kept tokens: the PNGs are encoded
    train_round(muse, tmp_path / "r", ["p000_k001.png", "p002_k000.png"], steps=2, progress=False, overwrite=True)
    assert encoded == [2]


def test_candidates_keep_the_tokens_they_were_decoded_from(tiny_muse_dir, round1, clip_dir, tmp_path):
    muse = load_muse(tiny_muse_dir)
    config = SamplingConfig(steps=2, lambda_a=0.0)
    generate_candidates(
        muse, round1, PROMPTS[:2], tmp_path, "oil", per_prompt=2, config=config, clip=clip_dir, progress=False
    )
    files = ["p000_k001.png", "p001_k000.png"]
    tokens = candidate_tokens(muse, tmp_path, files)
    assert tokens is not None and tokens.shape == (2, *muse_token_shape(muse)) and tokens.dtype == torch.long
    decoded = to_pil_images(muse.decode_tokens(tokens))
    for image, file in zip(decoded, files, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "candidates" / file).convert("RGB")))
    with torch.no_grad():
        muse.vqvae.quantize.embedding.weight.add_(1.0)  # another VQ: its codes mean other things
    assert candidate_tokens(muse, tmp_path, files) is None


def test_round_folder_errors(tmp_path):
    (tmp_path / "candidates").mkdir()
    with pytest.raises(StylecraftError, match="not a feedback round folder"):
        select(tmp_path, "clip")
    (tmp_path / "round.json").write_text("{broken")
    with pytest.raises(StylecraftError, match="malformed"):
        select(tmp_path, "clip")
    (tmp_path / "picks.json").write_text(json.dumps({"selected": ["../../etc/passwd"]}))
    with pytest.raises(StylecraftError, match="not a candidate image"):
        read_picks(tmp_path)
    (tmp_path / "p.txt").write_text("\n# comment\n")
    with pytest.raises(StylecraftError, match="has no prompts"):
        read_prompts(tmp_path / "p.txt")
    with pytest.raises(StylecraftError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


def test_feedback_cli_end_to_end(tiny_muse_dir, round1, clip_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]))
    out = tmp_path / "round"
    argv = [
        "--quiet",
        "feedback",
        "--model",
        str(tiny_muse_dir),
        "--adapter",
        str(round1),
        "--style",
        "oil",
        "--prompts",
        str(prompts),
        "--per-prompt",
        "2",
        "--steps",
        "2",
        "--clip",
        str(clip_dir),
        "--train-steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "candidates" not in err and "Loading weights" not in err and "training" not in err  # --quiet: no bars
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "selection.json").read_text())["method"] == "clip"
    sampling = json.loads((out / "round.json").read_text())["sampling"]
    assert (sampling["guidance_scale"], sampling["lambda_a"]) == (10.0, 0.0)  # an aMUSEd-layout folder: aMUSEd's
    # The same command without --per-prompt resumes the round with its own K (not the default 8 -> "other settings")
    k = argv.index("--per-prompt")
    assert main(argv[:k] + argv[k + 2 :]) == 0
    assert len(json.loads((out / "scores.json").read_text())) == 4
    assert main(argv[:-2] + ["--per-prompt", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--per-prompt must be at least 1" in capsys.readouterr().err


def test_rounds_chain_and_keep_the_style_reference(tiny_muse_dir, round1, clip_dir, tmp_path):
    """Round 3 trains from Round 2's adapter; its candidates are scored against the original style reference, not
    against Round 2's first pick (a Round-2 adapter's first training image)."""

    def pixels(path):
        return np.asarray(Image.open(path).convert("RGB"))

    def feedback(adapter, out):
        argv = ["--quiet", "feedback", "--model", str(tiny_muse_dir), "--adapter", str(adapter), "--style", "oil"]
        argv += ["--num-prompts", "2", "--per-prompt", "2", "--steps", "2", "--clip", str(clip_dir)]
        assert main([*argv, "--train-steps", "2", "--out", str(out)]) == 0

    feedback(round1, tmp_path / "round2")
    feedback(tmp_path / "round2" / "adapter", tmp_path / "round3")
    reference = pixels(round1 / "train_images" / "000.png")
    picked = pixels(tmp_path / "round2" / "adapter" / "train_images" / "000.png")
    assert not np.array_equal(picked, reference)  # so the check below can tell them apart
    for round_dir in ("round2", "round3"):
        assert np.array_equal(pixels(tmp_path / round_dir / "reference.png"), reference)
        assert np.array_equal(pixels(tmp_path / round_dir / "adapter" / "style_reference.png"), reference)
    settings = json.loads((tmp_path / "round3" / "round.json").read_text())
    assert settings["adapter"] == str((tmp_path / "round2" / "adapter").resolve())
    assert (tmp_path / "round3" / "adapter" / "adapter_model.safetensors").is_file()


def test_shapes_world_feedback_prompts_never_ask_for_an_evaluation_prompt():
    from stylecraft.evaluation import make_task
    from stylecraft.world import HELD_OUT_STYLES

    assert len(SHAPES_WORLD_CONTENT) == len(set(SHAPES_WORLD_CONTENT)) == 30  # the paper's P
    for style in HELD_OUT_STYLES:
        task = make_task(style)
        feedback = {f"{content} in {style} style" for content in SHAPES_WORLD_CONTENT}
        assert not feedback & set(task.prompts) and task.reference_prompt not in feedback
    assert not any("red" in c or "circle" in c for c in SHAPES_WORLD_CONTENT)  # the reference's colour and shape
