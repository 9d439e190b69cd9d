"""Crash safety as a tested property (issue #32): ``python -m stylecraft`` is SIGKILLed before every file rename
(``write``) and every rename of a folder swap (``swap``) in turn, through the test hook ``STYLECRAFT_KILL_AT``
(``io.kill_point``), then looked at and run again. What the kill left is the old state, the complete new one, or a
swap cut between its renames whose both halves are whole; the rerun (with --resume where a checkpoint was left)
reaches the uninterrupted run's bytes; nothing left behind is in its way.

Slow: about 90 runs of the command line, several minutes on an idle laptop core.
"""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PROMPT = "a red house in watercolor painting style"


def run(args: list[str], kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "STYLECRAFT_QUIET": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("STYLECRAFT_KILL_AT", None)
    if kill is not None:
        env["STYLECRAFT_KILL_AT"] = kill
    command = [sys.executable, "-m", "stylecraft", "--quiet", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def ok(args: list[str]) -> None:
    result = run(args)
    assert result.returncode == 0, result.stderr


def each_kill(args: list[str], start: Callable[[], None]) -> Iterator[str]:
    """Run ``args`` from ``start()``'s state killed at the 1st, 2nd, ... ``write``, then ``swap``, until a run gets
    through; yield the point after each kill."""
    for label in ("write", "swap"):
        for nth in itertools.count(1):
            start()
            result = run(args, kill=f"{label}@{nth}")
            if result.returncode == 0:
                assert nth > 1, f"never reached a {label}"
                break
            assert result.returncode == -signal.SIGKILL, result.stderr
            yield f"{label}@{nth}"


def contents(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (hidden leftovers included), less the ``skip`` names."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


ADAPTER = ("adapter_config.json",)  # holds the training time in seconds: the one file that differs between runs


def fresh(folder: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(folder, ignore_errors=True)


def restore(folder: Path, saved: Path) -> Callable[[], None]:
    def start() -> None:
        for path in (folder, folder.with_name(f".{folder.name}.partial"), folder.with_name(f".{folder.name}.old")):
            shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(saved, folder)

    return start


def whole_swap_halves(folder: Path, allowed: list[dict[str, bytes]], skip: tuple[str, ...]) -> bool:
    """``folder`` is gone between a swap's renames: its old self and the complete new one wait beside it."""
    old, new = folder.with_name(f".{folder.name}.old"), folder.with_name(f".{folder.name}.partial")
    return not folder.exists() and contents(old, skip) in allowed and contents(new, skip) in allowed


def train_args(model: Path, image: Path, out: Path, *extra) -> list:
    common = ["--steps", "2", "--batch-size", "2", "--checkpoint-every", "1"]
    return ["train", "--model", model, "--image", image, "--prompt", PROMPT, *common, *extra, "--out", out]


def test_train_killed_anywhere_resumes_to_the_uninterrupted_bytes(tiny_muse_dir, style_png, tmp_path):
    ok(train_args(tiny_muse_dir, style_png, tmp_path / "reference"))
    reference = contents(tmp_path / "reference", ADAPTER)
    out = tmp_path / "ad"
    kills = []
    for point in each_kill(train_args(tiny_muse_dir, style_png, out), fresh(out)):
        kills.append(point)
        assert not (out / "adapter_config.json").exists(), point  # nothing that looks finished
        result = run(train_args(tiny_muse_dir, style_png, out))  # the same command, as a user would
        if result.returncode == 2 and "pass --resume to continue" in result.stderr:  # a checkpoint was kept
            result = run(train_args(tiny_muse_dir, style_png, out, "--resume"))
        assert result.returncode == 0, (point, result.stderr)
        assert contents(out, ADAPTER) == reference, point
        assert sorted(p.name for p in tmp_path.iterdir()) == [".ad.lock", ".reference.lock", "ad", "reference"]
    # 2 checkpoints x 2 files, log, training image, weights, config; checkpoint 1 (1 rename), 2 (2)
    assert len(kills) == 8 + 3, kills


def test_train_overwrite_killed_anywhere_keeps_the_old_or_the_new_adapter(tiny_muse_dir, style_png, tmp_path):
    out, saved = tmp_path / "ad", tmp_path / "saved"
    ok(train_args(tiny_muse_dir, style_png, saved, "--seed", "1"))
    ok(train_args(tiny_muse_dir, style_png, tmp_path / "reference", "--seed", "2"))
    old, new = contents(saved, ADAPTER), contents(tmp_path / "reference", ADAPTER)
    replace = train_args(tiny_muse_dir, style_png, out, "--seed", "2", "--overwrite")
    kills = []
    for point in each_kill(replace, restore(out, saved)):
        kills.append(point)
        left = contents(out, ADAPTER) if out.exists() else None
        assert left in (old, new) or whole_swap_halves(out, [old, new], ADAPTER), point
        ok(replace)  # the same command again
        assert contents(out, ADAPTER) == new, point
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".ad.") and p.name != ".ad.lock"], point
    assert len(kills) == 8 + 3 + 2, kills  # a fresh run's points, then the two renames of --out's swap


def test_sample_overwrite_killed_anywhere_keeps_the_old_or_the_new_images(tiny_muse_dir, tmp_path):
    def sample(out: Path, seed: int, *extra) -> list:
        common = ["--prompt", PROMPT, "--num-images", "1", "--steps", "1", "--seed", seed]
        return ["sample", "--model", tiny_muse_dir, *common, *extra, "--out", out]

    out, saved = tmp_path / "samples", tmp_path / "saved"
    ok(sample(saved, 0))
    ok(sample(tmp_path / "reference", 1))
    old, new = contents(saved), contents(tmp_path / "reference")
    kills = []
    for point in each_kill(sample(out, 1, "--overwrite"), restore(out, saved)):
        kills.append(point)
        left = contents(out) if out.exists() else None
        assert left in (old, new) or whole_swap_halves(out, [old, new], ()), point
        refused = run(sample(out, 2))  # the next run puts a cut swap right, then refuses to replace without asking
        assert refused.returncode == 2 and "not empty" in refused.stderr, point
        assert contents(out) in (old, new), point
        ok(sample(out, 1, "--overwrite"))
        assert contents(out) == new, point
    assert len(kills) == 3 + 2, kills  # image, grid, run.json; the swap's two renames


def test_feedback_round_retrained_and_killed_keeps_an_adapter(tiny_muse_dir, style_png, clip_dir, tmp_path):
    round1 = tmp_path / "round1"
    ok(train_args(tiny_muse_dir, style_png, round1))

    def feedback(out: Path, train_steps: int) -> list:
        common = ["--style", "oil", "--num-prompts", "1", "--per-prompt", "2", "--steps", "1", "--clip", clip_dir]
        return ["feedback", "--model", tiny_muse_dir, "--adapter", round1, *common, "--train-steps", train_steps,
                "--out", out]  # fmt: skip

    saved, reference = tmp_path / "saved", tmp_path / "reference"
    ok(feedback(saved, 2))  # Round 2 trained once; the rerun below retrains it with other settings (overwrite=True)
    shutil.copytree(saved, reference)
    ok(feedback(reference, 3))
    # feedback copies the style reference into the adapter after it is swapped in (feedback.train_round): a kill
    # there leaves the complete new adapter without it (and the copy's temp file, which the next run removes)
    skip = (*ADAPTER, "style_reference.png")
    old, new = contents(saved / "adapter", skip), contents(reference / "adapter", skip)
    assert json.loads((reference / "adapter" / "train_log.json").read_text())[-1]["step"] == 3
    out = tmp_path / "round"
    kills = []
    for point in each_kill(feedback(out, 3), restore(out, saved)):
        kills.append(point)
        adapter = out / "adapter"
        left = contents(adapter, skip) if adapter.exists() else None
        if left is not None:
            left = {name: data for name, data in left.items() if not name.startswith(".style_reference.png.")}
        assert left in (old, new) or whole_swap_halves(adapter, [old, new], skip), point
        ok(feedback(out, 3))
        assert contents(out / "adapter", ADAPTER) == contents(reference / "adapter", ADAPTER), point
    assert len([k for k in kills if k.startswith("swap")]) == 1 + 2, kills  # final checkpoint, then the adapter
