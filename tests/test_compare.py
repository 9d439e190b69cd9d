"""stylecraft compare-methods (compare.py): settings are refused before any model loads, and the table's rows."""

import pytest

from stylecraft.cli import main
from stylecraft.compare import ROWS, comparison_markdown


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--family", "sepia"], "unknown held-out family ['sepia']"),
        (["--images", "0"], "--images must be at least 1"),
        (["--families", "0"], "unknown held-out families (none)"),
        (["--methods", "dreambooth"], "--methods must be one of all, styledrop, instantstyle, got 'dreambooth'"),
    ],
)
def test_bad_settings_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "compare"
    assert main(["compare-methods", *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_styledrop_alone_is_its_table_2_on_the_families():
    from stylecraft.compare import METHODS, STYLEDROP_ROWS

    assert METHODS["styledrop"] == STYLEDROP_ROWS and STYLEDROP_ROWS[0].startswith("prompt only")
    assert set(METHODS["styledrop"]) | set(METHODS["instantstyle"]) == set(METHODS["all"])


def test_markdown_has_one_row_per_method_in_order():
    metrics = {"style_match": 0.5, "style_rank": 0.75, "content": 0.25, "leakage": 0.125, "text_score": 0.8}
    results = {
        "families": ["halftone", "duotone"],
        "images_per_family": 3,
        "mean": {row: {**metrics, "first_image_seconds": 12.0, "seconds_per_image": 0.5} for row in ROWS},
    }
    lines = comparison_markdown(results).splitlines()
    assert "6 images per row" in lines[0]
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    assert [line.split(" | ")[0].removeprefix("| ") for line in body] == list(ROWS)
    assert body[0].endswith("| 0.50 | 0.75 | 0.25 | 0.12 | 0.800 | 12.0 | 0.50 |")
