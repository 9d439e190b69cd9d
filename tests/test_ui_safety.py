"""The feedback studio under load and against a second process (issue #32 part C): deeply nested JSON gets a 400,
a burst of requests is all answered, binding beyond loopback warns, the URL line reaches a file at once, and picks
belong to the round folder (one server per round; two in-process studios keep each other's picks)."""

import http.client
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import test_ui

from stylecraft.cli import main
from stylecraft.feedback import read_picks
from stylecraft.locks import folder_lock
from stylecraft.ui import Studio, StudioServer

made_round, round_dir = test_ui.made_round, test_ui.round_dir  # the fixtures: a real round folder, a copy per test
Client = test_ui.Client  # the round served in-process on 127.0.0.1
BURST = 300  # connections opened at once; the issue saw 13-32 of them reset with the old listen backlog of 5


@pytest.fixture
def client(round_dir):
    served = Client(round_dir)
    yield served
    served.close()


def test_deeply_nested_json_gets_a_400_and_the_server_keeps_answering(client):
    nested = b"[" * 7500 + b"]" * 7500  # 15 KiB, under the size limit: json.loads alone raises RecursionError
    for body in (nested, b'{"file": ' + nested + b', "picked": true}', b'{"a": "[[[[' + b"[" * 9000 + b'"}'):
        status, answer = client.request("POST", "/api/picks", body, {"Content-Type": "application/json"})
        assert status == 400 and "error" in answer, body[:20]
    # brackets inside a string are text, not nesting: that body is valid JSON, refused only as a bad pick
    assert "not a candidate" in answer["error"]
    started = time.monotonic()  # an unterminated string of escaped quotes: scanning it once per quote took 2.4 s
    status, _ = client.request("POST", "/api/picks", b'"' + b'\\"' * 8000, {"Content-Type": "application/json"})
    assert status == 400 and time.monotonic() - started < 1.0
    assert client.request("GET", "/api/state")[0] == 200


def test_a_burst_of_concurrent_requests_is_all_answered(client):
    barrier, answers, failures = threading.Barrier(BURST, timeout=60), [], []

    def one_request():
        try:
            barrier.wait()
            answers.append(client.request("GET", "/api/train")[0])
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as err:
            failures.append(repr(err))

    threads = [threading.Thread(target=one_request, daemon=True) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not failures, f"{len(failures)} of {BURST} failed, e.g. {failures[0]}"
    assert answers == [200] * BURST


def test_binding_beyond_loopback_warns(round_dir, caplog):
    studio = Studio(round_dir)
    with caplog.at_level(logging.WARNING, logger="stylecraft"):
        StudioServer(studio, "127.0.0.1", 0).server_close()
        assert not caplog.records
        StudioServer(studio, "0.0.0.0", 0).server_close()  # closed before serving anything
    assert len(caplog.records) == 1 and "0.0.0.0" in caplog.text and "Host check is off" in caplog.text


def test_two_studios_on_one_round_keep_each_others_picks(round_dir):
    first, second = Studio(round_dir), Studio(round_dir)  # the Python API: no process lock, picks live on disk
    first.set_pick("p000_k000.png", True)
    second.set_pick("p001_k001.png", True)
    first.set_pick("p000_k002.png", True)
    assert read_picks(round_dir) == ["p000_k000.png", "p001_k001.png", "p000_k002.png"]
    assert first.state()["picks"] == second.state()["picks"] == read_picks(round_dir)


def ui_refused_at_once(round_dir) -> None:
    """`stylecraft ui` on a round another process holds: it must fail at once (in a thread, so code that serves
    instead makes the test fail after 60 s rather than hang it)."""
    codes = []
    thread = threading.Thread(target=lambda: codes.append(main(["ui", "--round", str(round_dir)])), daemon=True)
    thread.start()
    thread.join(60)
    assert codes == [2], "a second studio on the round started serving"


def test_the_studio_takes_the_round_lock(round_dir, capsys):
    with folder_lock(round_dir, "feedback"):
        ui_refused_at_once(round_dir)
    assert "round is in use by another stylecraft process" in capsys.readouterr().err


def test_url_line_reaches_a_file_at_once_and_the_server_owns_the_round(round_dir, tmp_path, capsys):
    """`stylecraft ui > log`: stdout is a file, so Python buffers it unless the line is flushed (PYTHONUNBUFFERED,
    which this project's shell sets, is removed here as a user's shell would not have it)."""
    log = tmp_path / "ui.log"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    with log.open("w") as stdout:
        server = subprocess.Popen(
            [sys.executable, "-m", "stylecraft", "ui", "--round", str(round_dir)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=env,
        )
    try:
        deadline, url = time.monotonic() + 90, None
        while url is None and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            url = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
        assert url, f"no URL in the log while the server runs: {log.read_text()!r}"
        connection = http.client.HTTPConnection("127.0.0.1", int(url.group(1)), timeout=30)
        connection.request("GET", "/api/state")
        assert connection.getresponse().status == 200
        connection.close()

        ui_refused_at_once(round_dir)  # a second server on the same round
        assert "in use by another stylecraft process (the feedback studio)" in capsys.readouterr().err
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    with folder_lock(round_dir, "a check"):  # the lock went with the process: a new studio may start
        pass
