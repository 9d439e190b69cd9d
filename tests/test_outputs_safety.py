"""Nothing lost, ever (issue #32): which folders --overwrite may replace, swaps a kill cannot break, one writer per
folder, a full disk and the umask. In-process: a "kill" here raises at the same named points the crash harness
(tests/test_crash.py) SIGKILLs at, and leaves the files as a kill would; that harness does it for real."""

import errno
import json
import os
import re

import pytest
import torch

from stylecraft import io
from stylecraft.adapters import read_adapter
from stylecraft.cli import main
from stylecraft.errors import StylecraftError
from stylecraft.io import MARKER, check_out, output_dir, write_json
from stylecraft.locks import folder_lock
from stylecraft.training import TrainConfig, train_adapter

PROMPT = "a red house in watercolor painting style"


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even ``except Exception``."""


def kill_at(monkeypatch, label: str, nth: int = 1) -> None:
    """Make the ``nth`` pass of ``io.kill_point(label)`` raise ``Killed``."""
    passes = {}

    def point(name: str) -> None:
        passes[name] = passes.get(name, 0) + 1
        if name == label and passes[name] == nth:
            raise Killed(f"{label}@{nth}")

    monkeypatch.setattr(io, "kill_point", point)


def train(muse, image, out, steps=4, **kwargs):
    config = TrainConfig(steps=steps, lr=3e-2, batch_size=2, checkpoint_every=1, seed=3)
    return train_adapter(muse, [image], [PROMPT], config, out, progress=False, **kwargs)


def weights(folder):
    return read_adapter(folder)[1]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- ownership before deletion ------------------------------------------------------------------------------------
def test_overwrite_never_replaces_a_folder_stylecraft_did_not_make(muse, image, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(
        StylecraftError, match=f"{re.escape(str(mine))} has files stylecraft did not make.*move it away"
    ):
        train(muse, image, mine, overwrite=True)
    with pytest.raises(StylecraftError, match="did not make"):
        with output_dir(mine, overwrite=True) as folder:
            write_json(folder / "run.json", {})
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "years of work"


def test_current_home_and_root_folders_are_never_an_output(muse, image, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "code.py").write_text("print(1)")
    (project / MARKER).write_text("")  # even a marker (say, copied along) does not make it replaceable
    monkeypatch.chdir(project / "src")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    with pytest.raises(StylecraftError, match="--out . is the current folder"):
        train(muse, image, ".", overwrite=True)
    with pytest.raises(StylecraftError, match="holds the current folder"):
        train(muse, image, "..", overwrite=True)
    with pytest.raises(StylecraftError, match="is the home folder"):
        with output_dir(tmp_path / "home", overwrite=True):
            pass
    with pytest.raises(StylecraftError, match="--out / holds the current folder"):
        check_out("/", overwrite=True)  # refused before anything, not by trying
    assert (project / "src" / "code.py").read_text() == "print(1)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "project"]  # no lock files, nothing


def test_overwrite_replaces_stylecraft_folders_and_empty_ones(muse, image, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    train(muse, image, empty, steps=2)
    first = weights(empty)
    train(muse, image, empty, steps=3, overwrite=True)
    assert json.loads((empty / "train_log.json").read_text())[-1]["step"] == 3 and not same(first, weights(empty))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".empty.lock", "empty"]  # nothing left beside it


def test_a_file_or_an_unwritable_out_is_refused_before_training(tiny_muse_dir, style_png, tmp_path, capsys):
    train_cli = ["train", "--model", str(tiny_muse_dir), "--image", str(style_png), "--prompt", PROMPT]
    (tmp_path / "notes.txt").write_text("keep")
    assert main(train_cli + ["--steps", "1", "--out", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt is a file; give a folder path" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep"
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; tests/test_crash.py has no root-free way either")
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(train_cli + ["--steps", "1000", "--out", str(locked / "ad")]) == 2
        assert "pick an --out in a folder you can write to" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


# ---- the new result is complete before the old one goes ----------------------------------------------------------
def test_an_interrupted_overwrite_keeps_the_finished_adapter(muse, image, tmp_path):
    out = tmp_path / "ad"
    train(muse, image, out, steps=2)
    before = weights(out)

    def interrupt(step, loss):
        if step == 2:  # after the new run's first checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(muse, image, out, steps=6, overwrite=True, on_step=interrupt)
    assert same(before, weights(out))
    train(muse, image, out, steps=6, overwrite=True)  # the same command again: no leftover in its way
    assert json.loads((out / "train_log.json").read_text())[-1]["step"] == 6


@pytest.mark.parametrize("nth", [1, 2])  # before the old folder moves aside / between the two renames
def test_a_killed_overwrite_swap_leaves_the_old_or_the_new_adapter(muse, image, tmp_path, monkeypatch, nth):
    out = tmp_path / "ad"
    train(muse, image, out, steps=2)
    old = weights(out)
    train(muse, image, tmp_path / "reference", steps=3)
    new = weights(tmp_path / "reference")
    kill_at(monkeypatch, "swap", 5 + nth)  # checkpoints 1 (one rename), 2 and 3 (two each), then --out's swap
    with pytest.raises(Killed):
        train(muse, image, out, steps=3, overwrite=True)
    monkeypatch.undo()
    with pytest.raises(StylecraftError, match="not empty"):  # the next run finds a finished adapter at --out
        train(muse, image, out, steps=3)
    assert same(weights(out), old if nth == 1 else new)  # the new one was complete: the swap is finished
    train(muse, image, out, steps=3, overwrite=True)  # and the same command again clears what the kill left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ad.lock", ".reference.lock", "ad", "reference"]


def test_a_kill_between_the_checkpoint_renames_keeps_the_run(muse, image, tmp_path, monkeypatch):
    train(muse, image, tmp_path / "full", steps=4)
    kill_at(monkeypatch, "swap", 3)  # checkpoint 1: one rename; checkpoint 2: aside, then killed before the 2nd
    with pytest.raises(Killed):
        train(muse, image, tmp_path / "ad", steps=4)
    monkeypatch.undo()
    assert not (tmp_path / "ad" / "checkpoint").exists()  # what the issue found: --resume had nothing to resume
    train(muse, image, tmp_path / "ad", steps=4, resume=True)
    assert same(weights(tmp_path / "full"), weights(tmp_path / "ad"))


@pytest.mark.parametrize("label, nth", [("write", 1), ("swap", 1)])
def test_a_kill_before_the_first_checkpoint_does_not_block_the_same_command(
    muse, image, tmp_path, monkeypatch, label, nth
):
    kill_at(monkeypatch, label, nth)
    with pytest.raises(Killed):
        train(muse, image, tmp_path / "ad", steps=2)
    monkeypatch.undo()
    train(muse, image, tmp_path / "ad", steps=2)
    train(muse, image, tmp_path / "full", steps=2)
    assert same(weights(tmp_path / "full"), weights(tmp_path / "ad"))


def test_a_killed_output_swap_is_recovered_by_the_next_run(tmp_path, monkeypatch):
    out = tmp_path / "samples"
    with output_dir(out) as folder:
        write_json(folder / "run.json", {"run": "old"})
    for nth, expected in ((1, "old"), (2, "new")):  # killed before either rename / between the two
        kill_at(monkeypatch, "swap", nth)
        with pytest.raises(Killed):
            with output_dir(out, overwrite=True) as folder:
                write_json(folder / "run.json", {"run": "new"})
        monkeypatch.undo()
        with pytest.raises(StylecraftError, match="not empty"):
            with output_dir(out):
                pass
        assert json.loads((out / "run.json").read_text()) == {"run": expected}
        with output_dir(out, overwrite=True) as folder:  # and the next one back where it started
            write_json(folder / "run.json", {"run": "old"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".samples.lock", "samples"]


# ---- one writer per folder ----------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_at_once(muse, image, tmp_path):
    out = tmp_path / "ad"
    with folder_lock(out, "training"):  # another process (flock: another open file is another owner)
        with pytest.raises(StylecraftError, match=f"{re.escape(str(out))} is in use by another stylecraft process"):
            train(muse, image, out, steps=1000)
        with pytest.raises(StylecraftError, match="in use"):
            with output_dir(out):
                pass
    assert not out.exists()
    train(muse, image, out, steps=1)


# ---- a full disk --------------------------------------------------------------------------------------------------
def fill_disk_after(monkeypatch, writes: int) -> None:
    """Let ``writes`` files through ``io._write_file``, then fail every write as a full disk does."""
    real, count = io._write_file, [0]

    def write(path, data):
        count[0] += 1
        if count[0] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(path, data)

    monkeypatch.setattr(io, "_write_file", write)


@pytest.mark.parametrize("writes", [0, 2, 8])  # at the 1st checkpoint, the 2nd, the adapter itself
def test_a_full_disk_is_one_line_and_nothing_blocks_the_rerun(muse, image, tmp_path, monkeypatch, writes):
    out = tmp_path / "ad"
    fill_disk_after(monkeypatch, writes)
    with pytest.raises(StylecraftError, match=f"^no space left on {re.escape(str(out))}.*free some space, then run"):
        train(muse, image, out, steps=3)
    monkeypatch.undo()
    assert not [p for p in out.rglob(".*") if p.name != MARKER]  # no temp file, no half checkpoint
    try:
        train(muse, image, out, steps=3)
    except StylecraftError as err:  # a checkpoint was written before the disk filled: continue from it
        assert "pass --resume to continue" in str(err)
        train(muse, image, out, steps=3, resume=True)
    train(muse, image, tmp_path / "full", steps=3)
    assert same(weights(tmp_path / "full"), weights(out))


def test_a_full_disk_while_writing_results_leaves_the_old_ones(tmp_path, monkeypatch):
    out = tmp_path / "samples"
    with output_dir(out) as folder:
        write_json(folder / "run.json", {"run": "old"})
    fill_disk_after(monkeypatch, 0)
    with pytest.raises(StylecraftError, match=f"^no space left on {re.escape(str(tmp_path / '.samples.partial'))}"):
        with output_dir(out, overwrite=True) as folder:
            write_json(folder / "run.json", {"run": "new"})
    monkeypatch.undo()
    assert json.loads((out / "run.json").read_text()) == {"run": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".samples.lock", "samples"]


# ---- the umask ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_honour_the_umask(muse, image, tmp_path, mask):
    previous = os.umask(mask)
    try:
        train(muse, image, tmp_path / "ad", steps=1)
        with output_dir(tmp_path / "samples") as folder:
            write_json(folder / "run.json", {})
    finally:
        os.umask(previous)
    for path in [tmp_path / "ad", tmp_path / "samples", *(tmp_path / "ad").rglob("*"), tmp_path / "samples/run.json"]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert path.stat().st_mode & 0o777 == expected, path
