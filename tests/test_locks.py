"""Single-writer locks on output folders (stylecraft.locks)."""

import subprocess
import sys

import pytest

from stylecraft.errors import StylecraftError
from stylecraft.locks import folder_lock


def test_a_second_process_is_refused_at_once_and_told_who_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    script = f"from stylecraft.locks import folder_lock\nwith folder_lock({str(out)!r}, 'sampling'): pass"
    with folder_lock(out, "training"):
        refused = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0
        assert "in use by another stylecraft process (training) with pid" in refused.stderr
        with pytest.raises(StylecraftError, match=r"\(training\) with pid \d+"):  # another holder in this process
            with folder_lock(out, "sampling"):
                pass
    # released: the lock file left behind blocks nothing
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0
    with folder_lock(out, "sampling"):
        pass


def test_sample_and_instantstyle_check_and_lock_out_before_any_work(tmp_path, capsys):
    """A refused --out costs nothing: the lock and the ownership check come before drawing or loading models."""
    from stylecraft.api import load, sample
    from stylecraft.cli import main

    muse = load("tiny-random")
    forwards = []
    muse.text_encoder.register_forward_hook(lambda *args: forwards.append(1))  # counts prompt encodings
    out = tmp_path / "out"
    with folder_lock(out, "training"):
        with pytest.raises(StylecraftError, match="in use by another stylecraft process"):
            sample(muse, ["a red circle"], num_images=1, out=out, progress=False)
    assert forwards == [] and not out.exists()
    sample(muse, ["a red circle"], num_images=1, out=out, progress=False)
    assert forwards and (out / "grid.png").is_file()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    style = tmp_path / "style.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(style)
    args = ["instantstyle", "--model", str(tmp_path / "no-such-model"), "--style-image", str(style)]
    assert main([*args, "--prompt", "a fox", "--out", str(mine), "--overwrite"]) == 2
    assert "stylecraft did not make" in capsys.readouterr().err  # not the missing model: --out came first
    assert (mine / "notes.txt").read_text() == "mine"
