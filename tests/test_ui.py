"""The feedback studio (stylecraft ui): picks persist, only round-folder images are served, Round 2 trains from
the page, and a real headless Chromium picks images by mouse and keyboard and sees them again after a reload."""

import base64
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylecraft.api import train
from stylecraft.cli import main
from stylecraft.feedback import generate_candidates, read_picks
from stylecraft.feedback import select as select_picks
from stylecraft.muse import load_muse
from stylecraft.sampling import SamplingConfig
from stylecraft.training import load_recipe
from stylecraft.ui import Studio, StudioServer
from stylecraft.ui.server import MAX_BODY

PROMPTS = ["a cat in oil style", "a dog in oil style"]


@pytest.fixture(scope="module")
def made_round(tiny_muse_dir, clip_dir, tmp_path_factory):
    """A real round folder: a 2-step Round-1 adapter on the tiny model, 2 prompts x 3 scored candidates."""
    folder = tmp_path_factory.mktemp("ui")
    muse = load_muse(tiny_muse_dir)
    image = Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype("uint8"))
    config = load_recipe("round1", steps=2, batch_size=2)
    train(muse, [image], ["a red house in oil style"], folder / "round1", config, progress=False)
    config = SamplingConfig(steps=2, lambda_a=0.0)
    generate_candidates(
        muse,
        folder / "round1",
        PROMPTS,
        folder / "round",
        "oil",
        per_prompt=3,
        config=config,
        clip=clip_dir,
        progress=False,
    )
    return folder / "round"


@pytest.fixture
def round_dir(made_round, tmp_path):
    """A fresh copy per test, so picks and Round-2 outputs don't leak between tests."""
    return Path(shutil.copytree(made_round, tmp_path / "round"))


class Client:
    """Requests to a studio served in-process on 127.0.0.1, with raw paths (no client-side normalisation)."""

    def __init__(self, round_dir: Path, **options):
        self.server = StudioServer(Studio(round_dir, **options), "127.0.0.1", 0)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def request(self, method: str, path: str, body: bytes | dict | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        is_json = response.getheader("Content-Type") == "application/json"
        return response.status, json.loads(data) if is_json else data

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def client(round_dir):
    served = Client(round_dir, train_steps=2)
    yield served
    served.close()


def test_state_and_picks_persist_across_restarts(round_dir, client):
    status, state = client.request("GET", "/api/state")
    assert status == 200 and state["picks"] == [] and state["target"] == 10
    assert [c["file"] for c in state["candidates"]][:4] == [
        "p000_k000.png",
        "p000_k001.png",
        "p000_k002.png",
        "p001_k000.png",
    ]
    assert state["round"]["prompts"] == PROMPTS and state["reference"] == "/files/reference.png"
    assert all(isinstance(c["text_score"], float) for c in state["candidates"])

    for file, picked in [
        ("p001_k002.png", True),
        ("p000_k000.png", True),
        ("p000_k001.png", True),
        ("p000_k000.png", False),
    ]:
        status, saved = client.request("POST", "/api/picks", {"file": file, "picked": picked})
        assert status == 200
    assert saved == {"picks": ["p001_k002.png", "p000_k001.png"], "target": 10}
    assert read_picks(round_dir) == ["p001_k002.png", "p000_k001.png"]  # on disk after every click
    assert select_picks(round_dir, "human") == ["p001_k002.png", "p000_k001.png"]  # what feedback --select human reads

    reopened = Client(round_dir)  # a new server (the browser closed, the server killed) shows the same state
    assert reopened.request("GET", "/api/state")[1]["picks"] == ["p001_k002.png", "p000_k001.png"]
    reopened.close()

    status, image = client.request("GET", "/files/candidates/p000_k000.png")
    assert status == 200 and image.startswith(b"\x89PNG")
    status, page = client.request("GET", "/")
    assert status == 200 and b"Train Round 2" in page
    assert client.request("GET", "/app.js")[0] == client.request("GET", "/style.css")[0] == 200


def test_only_round_folder_images_are_served(round_dir, client, tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    (round_dir / "candidates" / "link.png").symlink_to(outside)
    (round_dir / "linked").symlink_to(tmp_path)
    for path in [
        "/files/../secret.png",
        "/files/..%2fsecret.png",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/candidates/..%2F..%2Fsecret.png",
        "/files/candidates%5c..%5c..%5csecret.png",
        "/files//etc/passwd",
        "/files/candidates/link.png",  # a symlink pointing outside the round
        "/files/linked/secret.png",
    ]:
        assert client.request("GET", path)[0] == 403, path
    for path in ["/files/round.json", "/files/candidates/missing.png", "/files/%252e%252e/secret.png", "/nothing"]:
        assert client.request("GET", path)[0] == 404, path

    def post(body, headers=None):
        return client.request("POST", "/api/picks", body, headers)

    assert post({"file": "../secret.png", "picked": True})[0] == 400
    assert post({"file": "p000_k000.png", "picked": "yes"})[0] == 400
    assert post(b'{"file": "p000_k000.png", "picked": true}', {"Content-Type": "text/plain"})[0] == 415  # no CSRF
    assert post(b"x" * (MAX_BODY + 1), {"Content-Type": "application/json"})[0] == 413
    assert post(b"not json", {"Content-Type": "application/json"})[0] == 400
    assert post(b"[1]", {"Content-Type": "application/json"})[0] == 400
    assert client.request("GET", "/api/state", headers={"Host": "attacker.example"})[0] == 403  # DNS rebinding
    assert read_picks(round_dir) == []


def test_round_folder_errors_are_one_line(round_dir, tmp_path, capsys):
    assert main(["ui", "--round", str(tmp_path / "missing")]) == 2
    assert "not a feedback round folder" in capsys.readouterr().err
    assert main(["ui", "--round", str(round_dir), "--target", "0"]) == 2
    assert "--target must be at least 1" in capsys.readouterr().err
    assert main(["ui", "--round", str(round_dir), "--train-steps", "0"]) == 2
    assert "--train-steps must be at least 1" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["ui", "--round", str(round_dir), "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    (round_dir / "picks.json").write_text('{"selected": ["../../etc/passwd"]}')
    assert main(["ui", "--round", str(round_dir)]) == 2
    assert "not a candidate image" in capsys.readouterr().err
    (round_dir / "scores.json").write_text('{"p000_k000.png": {"prompt": "x"}}')
    assert main(["ui", "--round", str(round_dir)]) == 2
    assert "scores.json is malformed" in capsys.readouterr().err
    (round_dir / "round.json").write_text("{broken")
    assert main(["ui", "--round", str(round_dir)]) == 2
    assert "malformed" in capsys.readouterr().err


def test_train_round2_from_the_page(round_dir, client):
    assert client.request("POST", "/api/train", {})[0] == 400  # nothing picked yet
    for file in ("p000_k002.png", "p001_k000.png"):
        client.request("POST", "/api/picks", {"file": file, "picked": True})
    status, job = client.request("POST", "/api/train", {})
    assert status == 200 and job["phase"] in ("loading", "training", "sampling", "done")
    deadline = time.monotonic() + 120
    while job["phase"] not in ("done", "error") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = client.request("GET", "/api/train")[1]
    assert job["phase"] == "done", job
    assert (
        job["trained_on"] == 2 and job["method"] == "human" and job["adapter"] == str(round_dir.resolve() / "adapter")
    )
    config = json.loads((round_dir / "adapter" / "adapter_config.json").read_text())
    assert config["rank"] == 32 and config["prompts"] == PROMPTS  # the paper's Round 2 on the picks
    assert json.loads((round_dir / "adapter" / "train_log.json").read_text())[-1]["step"] == 2
    status, grid = client.request("GET", job["grid"])
    assert status == 200 and grid.startswith(b"\x89PNG") and (round_dir / "samples" / "grid.png").is_file()
    status, error = client.request("POST", "/api/train", {})
    assert status == 409 and "exists" in error["error"]  # replacing the adapter needs the page's confirmation
    reopened = Client(round_dir)
    assert reopened.request("GET", "/api/state")[1]["training"]["phase"] == "done"  # shown again after a restart
    reopened.close()


# ---- a real browser ------------------------------------------------------------------------------------------------
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ["chromium", "chromium-browser", "google-chrome"])), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing (as root, unless STYLECRAFT_NO_APT=1)."""
    if (
        find_chromium() is None
        and os.geteuid() == 0
        and shutil.which("apt-get")
        and not os.environ.get("STYLECRAFT_NO_APT")
    ):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(command, env=env, capture_output=True, timeout=900, check=False)
    binary = find_chromium()
    if binary is None:
        pytest.skip("headless Chromium is not installed and apt-get install chromium was not possible here")
    return binary


class DevTools:
    """Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no driver, no package.

    Messages are JSON, each ended by a NUL byte; Chromium reads commands on its fd 3 and answers on its fd 4.
    """

    def __init__(self, binary: str, profile: Path):
        to_chromium, self.writer = os.pipe()
        self.reader, from_chromium = os.pipe()

        def pipes_as_fd_3_and_4():
            os.dup2(to_chromium, 3)
            os.dup2(from_chromium, 4)

        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            preexec_fn=pipes_as_fd_3_and_4,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self.buffer, self.last_id, self.session = b"", 0, None

    def send(self, method: str, timeout: float = 30, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        os.write(self.writer, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:  # events arrive in between; skip them until our answer
            while b"\0" not in self.buffer:
                if not select.select([self.reader], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(f"no answer from Chromium to {method}")
                chunk = os.read(self.reader, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium exited")
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.last_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=1366, height=768, deviceScaleFactor=1, mobile=False)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never satisfied: {expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def press(self, key: str, code: str, key_code: int) -> None:
        """A real key press (down, then up) on the focused element."""
        text = {"text": key} if len(key) == 1 else {}
        self.send("Input.dispatchKeyEvent", type="keyDown", key=key, code=code, windowsVirtualKeyCode=key_code, **text)
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=key_code)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass  # already gone
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self.writer)
        os.close(self.reader)


def start_cli_server(round_dir: Path, sigint: object = signal.SIG_DFL) -> tuple[subprocess.Popen, str]:
    """`stylecraft ui --round DIR` as a person runs it, its SIGINT disposition inherited as ``sigint`` (a terminal
    leaves it at the default; a shell's background job ignores it); returns the process and the URL it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stylecraft", "ui", "--round", str(round_dir), "--target", "2", "--train-steps", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT then prints every thread's stack (stop_server)
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    if not select.select([process.stdout], [], [], 120)[0]:
        process.kill()
        pytest.fail("stylecraft ui printed no URL within 120 s")
    line = process.stdout.readline()
    url = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert url, f"no URL in {line!r} (stderr: {process.stderr.read() if process.poll() is not None else ''})"
    return process, url.group(0)


def stop_server(process: subprocess.Popen, timeout: float = 60) -> int:
    """Ctrl-C, as a person stops `stylecraft ui`; the exit code. If it has not stopped within ``timeout`` s, the test
    fails with the stack of every one of its threads (locally it stops in 1.5 s). Those stacks found why it once did
    not: run from a shell's background job (`make test &`), SIGINT is ignored, so the server now restores it."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # faulthandler (PYTHONFAULTHANDLER) dumps the threads to stderr
        _, stderr = process.communicate(timeout=30)
        pytest.fail(f"stylecraft ui did not stop within {timeout} s of Ctrl-C; its threads:\n{stderr[-6000:]}")


def test_ctrl_c_stops_the_server_even_when_started_as_a_background_job(round_dir):
    server, url = start_cli_server(round_dir, sigint=signal.SIG_IGN)
    assert url.startswith("http://127.0.0.1:")
    assert stop_server(server) == 0  # before, it ignored Ctrl-C (and `kill -INT`) for good


def test_browser_picks_by_click_and_keyboard_and_keeps_them_after_reload(round_dir, chromium, tmp_path):
    server, url = start_cli_server(round_dir)
    browser = DevTools(chromium, tmp_path / "profile")
    try:
        browser.open(url)
        browser.wait_for("document.querySelectorAll('.card').length === 6")
        browser.click('.card[data-file="p000_k001.png"]')  # mouse: picks it and focuses it
        browser.press("ArrowDown", "ArrowDown", 40)  # keyboard: same column, next prompt
        browser.press(" ", "Space", 32)
        browser.wait_for("document.querySelector('#save-status').textContent === 'Saved'")
        assert browser.evaluate("document.querySelector('#count').textContent") == "2"
        assert read_picks(round_dir) == ["p000_k001.png", "p001_k001.png"]

        browser.send("Page.reload")
        browser.wait_for("document.querySelectorAll('.card').length === 6")
        pressed = "[...document.querySelectorAll('.card[aria-pressed=true]')].map(c => c.dataset.file)"
        browser.wait_for(f"{pressed}.length === 2")
        assert browser.evaluate(pressed) == ["p000_k001.png", "p001_k001.png"]
        assert browser.evaluate("document.querySelector('#counter').textContent") == "2 / 2 picked"
        assert browser.evaluate("document.querySelector('#reference img').naturalWidth") > 0
        browser.press("?", "Slash", 191)
        assert browser.evaluate("document.querySelector('#help').open") is True
        browser.press("Escape", "Escape", 27)
        assert browser.evaluate("document.querySelector('#help').open") is False

        browser.click("#train")  # the target is reached, so no confirmation: Round 2 trains and its samples appear
        browser.wait_for(
            "document.querySelector('#result img').complete && !document.querySelector('#result').hidden", 120
        )
        assert "Round-2 adapter trained on 2 picks" in browser.evaluate(
            "document.querySelector('#train-phase').textContent"
        )
        assert (round_dir / "adapter" / "adapter_config.json").is_file()

        browser.screenshot(tmp_path / "ui.png")
        assert Image.open(tmp_path / "ui.png").size == (1366, 768)
        if os.environ.get("STYLECRAFT_UI_SCREENSHOT"):  # refresh the docs' picture: set it to docs/ui-screenshot.png
            shutil.copyfile(tmp_path / "ui.png", os.environ["STYLECRAFT_UI_SCREENSHOT"])
    finally:
        browser.close()
        assert stop_server(server) == 0  # Ctrl-C: the server stops cleanly, picks are already on disk
