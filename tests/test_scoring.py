"""CLIP text/style scores with conftest's tiny random CLIPModel: formulas, batching, folders, CLI JSON, errors."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stylecraft.errors import StylecraftError
from stylecraft.scoring import image_files, load_scorer, mean_and_stderr


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """An output folder shaped like `sample` / `instantstyle` output: NNN.png, grid.png, run.json, inputs/."""
    folder = tmp_path_factory.mktemp("run")
    rng = np.random.RandomState(0)
    for i in range(3):
        Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    Image.new("RGB", (70, 70)).save(folder / "grid.png")
    (folder / "run.json").write_text("{}")
    (folder / "inputs").mkdir()
    Image.new("RGB", (32, 32)).save(folder / "inputs" / "content_edges.png")
    return folder


def test_scores_are_cosines_of_clip_embeddings(clip_dir, run_folder):
    scorer = load_scorer(clip_dir, batch_size=2)  # batches of 2 over 3 images
    images = [Image.open(path).convert("RGB") for path in image_files(run_folder)]
    pixels = scorer.processor(images=images, return_tensors="pt").pixel_values
    tokens = scorer.tokenizer(["a red fox"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        image_features = F.normalize(scorer.model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text_features = F.normalize(scorer.model.get_text_features(input_ids=tokens.input_ids).pooler_output, dim=-1)
    torch.testing.assert_close(scorer.text_scores(images, "a red fox"), image_features @ text_features[0])
    torch.testing.assert_close(scorer.style_scores(images, images[1]), image_features @ image_features[1])
    torch.testing.assert_close(scorer.style_scores(images[1:2], images[1]), torch.ones(1))
    per_image = scorer.text_scores(images, ["a red fox", "a blue cat", "a red fox"])  # one prompt per image
    same = scorer.text_scores(images, "a red fox")
    assert per_image[[0, 2]].tolist() == pytest.approx(same[[0, 2]].tolist()) and per_image[1] != pytest.approx(same[1])


def test_folders_skip_grid_and_inputs(run_folder, tmp_path):
    assert [path.name for path in image_files(run_folder)] == ["000.png", "001.png", "002.png"]
    with pytest.raises(StylecraftError, match="no images"):
        image_files(tmp_path)
    with pytest.raises(StylecraftError, match="not a folder"):
        image_files(tmp_path / "missing")


def test_mean_and_standard_error():
    mean, stderr = mean_and_stderr([1.0, 2.0, 3.0, 6.0])
    assert mean == 3.0 and stderr == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)
    assert mean_and_stderr([0.5]) == (0.5, None)


def test_cli_prints_json(clip_dir, run_folder, capsys):
    from stylecraft.cli import main

    args = ["score", "--images", str(run_folder), "--prompt", "a red fox", "--clip", str(clip_dir)]
    assert main([*args, "--style-image", str(run_folder / "001.png")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["file"] for row in result["per_image"]] == ["000.png", "001.png", "002.png"]
    assert result["per_image"][1]["style_score"] == pytest.approx(1.0)
    text = [row["text_score"] for row in result["per_image"]]
    assert (result["mean"]["text_score"], result["stderr"]["text_score"]) == pytest.approx(mean_and_stderr(text))
    assert main(args) == 0  # no style image: style scores are null
    result = json.loads(capsys.readouterr().out)
    assert result["mean"]["style_score"] is None and result["per_image"][0]["style_score"] is None


def test_clear_errors(monkeypatch, tmp_path, clip_dir, clip_tokenizer):
    import stylecraft.world

    monkeypatch.setattr(stylecraft.world, "shapes_clip_dir", lambda: tmp_path / "not-installed")
    with pytest.raises(StylecraftError, match="pass --clip"):
        load_scorer()
    with pytest.raises(StylecraftError, match="could not load CLIP"):
        load_scorer(tmp_path)
    scorer = load_scorer(clip_dir)
    with pytest.raises(StylecraftError, match="3 images but 2 prompts"):
        scorer.text_scores([Image.new("RGB", (32, 32))] * 3, ["a", "b"])
