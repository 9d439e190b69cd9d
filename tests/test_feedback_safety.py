"""`stylecraft feedback` without training does what docs/ui.md says (issue #32 part C): `--select human --no-train`
makes the round for the studio, `--select clip --no-train` writes the picks it names without replacing a person's,
and a round folder another process holds is refused before any work."""

import json

import test_feedback
from test_outputs_safety import Killed, kill_at, same, weights

from stylecraft.cli import main
from stylecraft.feedback import read_picks, select, style_reference, write_picks
from stylecraft.io import recover
from stylecraft.locks import folder_lock
from stylecraft.ui import Studio

round1 = test_feedback.round1  # the fixture: a 2-step Round-1 adapter on the tiny model


def feedback_argv(tiny_muse_dir, adapter, clip_dir, out, *options) -> list[str]:
    argv = ["--quiet", "feedback", "--model", str(tiny_muse_dir), "--adapter", str(adapter), "--style", "oil"]
    argv += ["--num-prompts", "2", "--per-prompt", "2", "--steps", "2", "--clip", str(clip_dir)]
    return [*argv, *options, "--out", str(out)]


def test_human_no_train_makes_the_round_and_names_the_studio(tiny_muse_dir, round1, clip_dir, tmp_path, capsys):
    out = tmp_path / "round"
    assert main(feedback_argv(tiny_muse_dir, round1, clip_dir, out, "--select", "human", "--no-train")) == 0
    printed = capsys.readouterr().out
    assert f"stylecraft ui --round {out}" in printed  # the next step of docs/ui.md
    assert len(json.loads((out / "scores.json").read_text())) == 4
    assert not (out / "picks.json").exists() and not (out / "selection.json").exists()  # nothing picked or trained
    assert not (out / "adapter").exists()
    assert len(Studio(out).state()["candidates"]) == 4  # the studio opens on it


def test_clip_no_train_writes_the_picks_it_names(tiny_muse_dir, round1, clip_dir, tmp_path, capsys):
    out = tmp_path / "round"
    argv = feedback_argv(tiny_muse_dir, round1, clip_dir, out, "--select", "clip", "--no-train")
    assert main(argv) == 0
    assert str(out / "picks.json") in capsys.readouterr().out
    assert read_picks(out) == select(out, "clip") and len(read_picks(out)) == 2  # one per prompt, best text score
    assert not (out / "selection.json").exists() and not (out / "adapter").exists()
    assert main(argv) == 0  # a rerun selects the same picks: nothing to replace

    write_picks(out, ["p000_k000.png"])  # a person changed them in the studio
    assert main(argv) == 2
    assert "already holds other picks" in capsys.readouterr().err
    assert read_picks(out) == ["p000_k000.png"]  # kept


def test_feedback_refuses_a_round_another_process_holds(tiny_muse_dir, round1, clip_dir, tmp_path, capsys):
    out = tmp_path / "round"
    with folder_lock(out, "the feedback studio"):
        assert main(feedback_argv(tiny_muse_dir, round1, clip_dir, out, "--no-train")) == 2
    assert "round is in use by another stylecraft process" in capsys.readouterr().err
    assert not out.exists()  # refused before any work


def test_a_killed_feedback_rerun_keeps_the_previous_round2_adapter(
    tiny_muse_dir, round1, clip_dir, tmp_path, monkeypatch
):
    """A rerun with other picks retrains ROUND/adapter with overwrite=True (as the studio's Train Round 2 does).
    Killed at any folder swap, it leaves the previous Round-2 adapter or the complete new one, and the
    same command then finishes."""
    out = tmp_path / "round"
    argv = feedback_argv(tiny_muse_dir, round1, clip_dir, out, "--train-steps", "2")
    assert main([*argv[:-2], "--select", "clip", *argv[-2:]]) == 0
    write_picks(out, ["p000_k000.png", "p000_k001.png", "p001_k000.png", "p001_k001.png"])  # new picks: all four
    rerun = [*argv[:-2], "--select", "human", *argv[-2:]]
    before, found = weights(out / "adapter"), []
    for nth in range(1, 50):  # the swaps (checkpoints, then the adapter); every other write goes to the new folder
        kill_at(monkeypatch, "swap", nth)
        try:
            main(rerun)
        except Killed:
            recover(out / "adapter")  # what the next run does first: finish or undo a swap cut short
            found.append(weights(out / "adapter"))
            continue
        break  # the command ran to its end: no swap left to kill at
    after = weights(out / "adapter")  # the same seed, so the same weights as a run never killed
    assert len(found) >= 2 and not same(before, after)  # killed at least twice; old and new can be told apart
    assert all(same(left, before) or same(left, after) for left in found)

    # Killed after the swap but before the style reference is copied in: Round 3 from this adapter still scores
    # against the round's reference, not against the adapter's first training image (a pick)
    (out / "adapter" / "style_reference.png").unlink()
    assert style_reference(out / "adapter") == out / "reference.png"
