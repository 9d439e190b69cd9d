"""The feedback studio: a local web page where a person picks Round-2 images (StyleDrop §3.3, human feedback).

The paper's best results come from a person picking ~10 good Round-1 candidates in a few minutes. This serves one
static page (``index.html``, ``app.js``, ``style.css`` beside this file) and a few JSON endpoints over a round folder
(the contract in ``stylecraft.feedback``), with the standard library's threading HTTP server::

    GET  /                  the page (and /app.js, /style.css)
    GET  /api/state         round settings, candidates with scores, picks, target, training status
    POST /api/picks         {"file": "p000_k001.png", "picked": true} -> saves ROUND/picks.json atomically
    POST /api/train         {"overwrite": false} -> Round 2 in a background thread (ROUND/adapter, ROUND/samples)
    GET  /api/train         training status, polled by the page
    GET  /files/<path>      an image inside the round folder (candidates, reference, sample grid); nothing else

Safety: the server binds 127.0.0.1 by default and answers only requests addressed to this machine's names (a
DNS-rebinding page cannot reach it); bound beyond loopback it warns. POSTs must be small, shallow JSON (a cross-site
form cannot send that without a CORS preflight, which is never granted); files are served only when their resolved
path, symlinks followed, stays inside the round folder and is an image; nothing is uploaded, and no input reaches a
shell or an eval. Picks live in ``picks.json``, read before every change, and ``stylecraft ui`` holds the round's
lock (``stylecraft.locks``) while it serves, so a second server or a ``stylecraft feedback`` on the round is refused.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import signal
import socket
import threading
import time
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import StylecraftError
from ..feedback import read_picks, read_round, train_round, write_picks
from ..io import write_json
from ..locks import folder_lock
from ..training import default_recipe, load_recipe

logger = logging.getLogger("stylecraft")

PAGE = {  # URL -> (file beside this module, content type); a fixed list, no path from the request is joined
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
MAX_BODY = 16 * 1024  # bytes; the page only ever sends a file name and a flag
MAX_DEPTH = 4  # nesting of JSON arrays and objects; json.loads recurses per level (RecursionError past ~1000)
# A JSON string, whose brackets are text, not nesting. An unterminated one runs to the end, so a match never fails
# and each byte is read once (failing matches retried at every later quote took 2.4 s on 16 KiB of \").
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.S)
SAMPLE_PROMPTS, SAMPLE_IMAGES = 6, 2  # the result grid: the round's first prompts x images, candidates' sampling
RUNNING = ("loading", "training", "sampling")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; object-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


class RequestError(Exception):
    """An HTTP error status with a message for the page."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Studio:
    """One round folder's picks and Round-2 training job, shared by the request threads."""

    def __init__(
        self,
        round_dir: str | Path,
        target: int | None = None,
        model: str | None = None,
        device: str = "cpu",
        recipe: str | None = None,
        train_steps: int | None = None,
    ):
        self.settings, self.scores = read_round(round_dir)  # a missing or malformed folder fails here, at startup
        self.root = Path(round_dir).resolve()
        if not self.scores:
            raise StylecraftError(
                f"{round_dir} has no scored candidates yet; run stylecraft feedback ... --select human --no-train"
            )
        try:
            self.candidates = sorted(
                (
                    {
                        "file": file,
                        "prompt_index": int(score["prompt_index"]),
                        "text_score": score["text_score"],
                        "style_score": score.get("style_score"),
                    }
                    for file, score in self.scores.items()
                    if (self.root / "candidates" / file).is_file()
                ),
                key=lambda c: (c["prompt_index"], c["file"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise StylecraftError(f"{self.root / 'scores.json'} is malformed ({err!r}); regenerate the round") from None
        read_picks(self.root)  # a corrupt picks.json fails at startup; afterwards the file is read before every use
        picks_file = self.root / "picks.json"
        saved = json.loads(picks_file.read_text()).get("target") if picks_file.is_file() else None
        if target is not None and target < 1:
            raise StylecraftError(f"--target must be at least 1, got {target}")
        self.target = target or (saved if isinstance(saved, int) and saved > 0 else 10)
        recipe = recipe or default_recipe(model or self.settings.get("base_model"), "round2")
        self.training = load_recipe(recipe, steps=train_steps)  # a bad recipe or step count fails at startup too
        self.model, self.device, self.recipe, self.train_steps = model, device, recipe, train_steps
        self.lock = threading.Lock()  # guards job, and picks.json between reading and writing it
        self.job: dict = {"phase": "idle"}
        if (self.root / "adapter" / "adapter_config.json").is_file():
            self.job = {"phase": "done", "earlier": True}  # a Round-2 adapter from an earlier session

    # ---- picks ----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        picks = read_picks(self.root)
        reference = self.root / "reference.png"
        return {
            "round": {
                "folder": str(self.root),
                "style": self.settings.get("style", ""),
                "base_model": self.settings.get("base_model", ""),
                "per_prompt": self.settings["per_prompt"],
                "prompts": self.settings["prompts"],
            },
            "reference": "/files/reference.png" if reference.is_file() else None,
            "candidates": [{**c, "url": f"/files/candidates/{c['file']}"} for c in self.candidates],
            "picks": picks,
            "target": self.target,
            "training": self.training_status(),
        }

    def set_pick(self, file: object, picked: object) -> dict:
        """Pick or unpick one candidate and save picks.json (atomic) before answering.

        The picks are read from the file first, not kept in memory: another studio on the same folder (the Python
        API; ``stylecraft ui`` refuses a second server) or ``feedback --select clip --no-train`` may have changed it.
        """
        if not isinstance(file, str) or file not in self.scores or not (self.root / "candidates" / file).is_file():
            raise RequestError(HTTPStatus.BAD_REQUEST, f"{file!r} is not a candidate of this round")
        if not isinstance(picked, bool):
            raise RequestError(HTTPStatus.BAD_REQUEST, "'picked' must be true or false")
        with self.lock:
            if self.job["phase"] in RUNNING:
                raise RequestError(HTTPStatus.CONFLICT, "picks are locked while Round 2 trains on them")
            picks = [f for f in read_picks(self.root) if f != file] + ([file] if picked else [])
            write_picks(self.root, picks, target=self.target)
            return {"picks": picks, "target": self.target}

    # ---- Round 2 ----------------------------------------------------------------------------------------------
    def start_training(self, overwrite: object) -> dict:
        """Start Round-2 training on the current picks in a background thread."""
        with self.lock:
            if self.job["phase"] in RUNNING:
                raise RequestError(HTTPStatus.CONFLICT, "Round 2 is already training")
            selected = read_picks(self.root)
            if not selected:
                raise RequestError(HTTPStatus.BAD_REQUEST, "pick at least one image first")
            if (self.root / "adapter" / "adapter_config.json").is_file() and overwrite is not True:
                raise RequestError(
                    HTTPStatus.CONFLICT, f"{self.root / 'adapter'} exists; confirm to replace it (overwrite: true)"
                )
            self.job = {"phase": "loading", "trained_on": len(selected), "started": time.time()}
        threading.Thread(target=self._train, args=(selected,), name="round2", daemon=True).start()
        return self.training_status()

    def _train(self, selected: list[str]) -> None:
        from ..api import load, sample
        from ..sampling import SamplingConfig

        steps = self.training.steps
        try:
            muse = load(self.model or self.settings.get("base_model") or None, self.device)
            self._update(phase="training", steps=steps)
            train_round(
                muse,
                self.root,
                selected,
                self.recipe,
                self.train_steps,
                overwrite=True,
                progress=False,
                on_step=lambda step, loss: self._update(step=step, loss=round(loss, 4)),
            )
            write_json(self.root / "selection.json", {"method": "human", "selected": selected})
            self._update(phase="sampling", step=steps)
            sample(
                muse,
                self.settings["prompts"][:SAMPLE_PROMPTS],
                adapter=self.root / "adapter",
                config=SamplingConfig(**self.settings.get("sampling", {})),
                num_images=SAMPLE_IMAGES,
                seed=self.settings.get("seed", 0),
                out=self.root / "samples",
                overwrite=True,
                progress=False,
            )
            self._update(phase="done")
        except Exception as err:  # any failure goes to the page; a silently dead thread would leave it polling
            message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            kind = "" if isinstance(err, StylecraftError) else f"{err.__class__.__name__}: "
            self._update(phase="error", error=kind + message)

    def _update(self, **changes) -> None:
        with self.lock:
            self.job.update(changes)
            if changes.get("phase") in ("done", "error"):
                self.job["seconds"] = round(time.time() - self.job["started"], 1)

    def training_status(self) -> dict:
        """The job as the page shows it; step and loss are the trainer's own, reported after every step."""
        with self.lock:
            job = dict(self.job)
        started = job.pop("started", None)
        if started is not None:
            job["elapsed"] = round(time.time() - started, 1)
        if job["phase"] == "done":
            job["adapter"] = str(self.root / "adapter")
            selection = self.root / "selection.json"
            if selection.is_file():
                job["method"] = json.loads(selection.read_text()).get("method")
            grid = self.root / "samples" / "grid.png"
            if grid.is_file():
                job["grid"] = f"/files/samples/grid.png?v={grid.stat().st_mtime_ns}"
        return job

    # ---- files ------------------------------------------------------------------------------------------------
    def round_file(self, relative: str) -> Path:
        """The image inside the round folder that ``relative`` (URL-decoded) names; 403 for anything outside it."""
        parts = relative.split("/")
        if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
            raise RequestError(HTTPStatus.FORBIDDEN, "only files inside the round folder are served")
        path = (self.root / relative).resolve()  # follows symlinks: one pointing outside is refused below
        if not path.is_relative_to(self.root):
            raise RequestError(HTTPStatus.FORBIDDEN, "only files inside the round folder are served")
        if path.suffix.lower() not in IMAGE_TYPES or not path.is_file():
            raise RequestError(HTTPStatus.NOT_FOUND, "no such image in the round folder")
        return path


class StudioServer(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog. With the default 5, a burst of 300 connections lost some: 13-32 reset (issue #32), 100 timed
    # out here (tests/test_ui_safety.py). The kernel caps it at net.core.somaxconn.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, studio: Studio, host: str, port: int):
        self.studio = studio
        super().__init__((host, port), StudioHandler)
        # Bound to this machine only: answer only requests addressed to it, so a web page whose domain is made to
        # resolve to 127.0.0.1 (DNS rebinding) gets nothing. Bound to a LAN address, the person chose to share it.
        self.loopback = ipaddress.ip_address(self.server_address[0]).is_loopback
        names = ("127.0.0.1", "localhost", self.server_address[0])
        self.hosts = {f"{name}:{self.server_port}" for name in names}
        if not self.loopback:
            logger.warning(
                "serving on %s, beyond this machine: anyone who can reach it can see the round, change the picks "
                "and start training, and the Host check is off; use --host 127.0.0.1 to keep it to this machine",
                host,
            )

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'127.0.0.1' if host in ('', '0.0.0.0') else host}:{self.server_port}/"


class StudioHandler(BaseHTTPRequestHandler):
    server: StudioServer
    server_version = "stylecraft-studio"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(self._get)

    def do_POST(self) -> None:
        self._respond(self._post)

    def _get(self) -> tuple[bytes, str]:
        path = urlsplit(self.path).path
        studio = self.server.studio
        if path in PAGE:
            name, kind = PAGE[path]
            return (Path(__file__).parent / name).read_bytes(), kind
        if path == "/api/state":
            return _json(studio.state())
        if path == "/api/train":
            return _json(studio.training_status())
        if path.startswith("/files/"):
            file = studio.round_file(unquote(path[len("/files/") :]))
            return file.read_bytes(), IMAGE_TYPES[file.suffix.lower()]
        raise RequestError(HTTPStatus.NOT_FOUND, f"no page {path}")

    def _post(self) -> tuple[bytes, str]:
        path = urlsplit(self.path).path
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(length) or b"{}"
        brackets = JSON_STRING.sub(b"", raw)
        if max(accumulate(1 if b in b"[{" else -1 for b in brackets if b in b"[]{}"), default=0) > MAX_DEPTH:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"the request body nests deeper than {MAX_DEPTH} levels")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        if path == "/api/picks":
            return _json(self.server.studio.set_pick(body.get("file"), body.get("picked")))
        if path == "/api/train":
            return _json(self.server.studio.start_training(body.get("overwrite", False)))
        raise RequestError(HTTPStatus.NOT_FOUND, f"no endpoint {path}")

    def _respond(self, handle) -> None:
        api = self.path.startswith("/api/")
        try:
            if self.server.loopback and self.headers.get("Host") not in self.server.hosts:
                raise RequestError(HTTPStatus.FORBIDDEN, "unexpected Host header; open the URL the server printed")
            status, (body, kind) = HTTPStatus.OK, handle()
        except RequestError as err:
            status, message = err.status, str(err)
            body, kind = _json({"error": message}) if api else (message.encode(), "text/plain; charset=utf-8")
        except StylecraftError as err:
            status, (body, kind) = HTTPStatus.BAD_REQUEST, _json({"error": str(err)})
        except OSError as err:  # e.g. the round folder was moved away while serving
            status, (body, kind) = HTTPStatus.INTERNAL_SERVER_ERROR, _json({"error": f"{err.strerror}: {err.filename}"})
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store" if api or kind.startswith("text/") else "max-age=3600")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass  # one line per image request would drown the URL; errors reach the page


def _json(data: dict) -> tuple[bytes, str]:
    return json.dumps(data).encode(), "application/json"


def run_cli(args) -> int:
    if not 0 <= args.port <= 65535:
        raise StylecraftError(f"--port must be 0-65535, got {args.port}")
    # A missing or malformed round fails here, before a lock file is made beside it. The lock is held for the
    # server's life: picks and Round 2 belong to one process (a second server or `stylecraft feedback` is refused).
    studio = Studio(args.round, args.target, args.model, args.device, args.recipe, args.train_steps)
    with folder_lock(studio.root, "the feedback studio"):
        try:
            server = StudioServer(studio, args.host, args.port)
        except OSError as err:
            raise StylecraftError(f"cannot listen on {args.host}:{args.port} ({err.strerror}); try --port 0") from None
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            # Started as a background job of a shell (`stylecraft ui ... &`), which ignores Ctrl-C for its jobs and
            # so for Python too: then `kill -INT` or a later Ctrl-C would never stop the server, as promised below.
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:  # from the printed URL on, Ctrl-C is a clean stop (one that came before serve_forever exited 130)
            # flushed: with stdout a file or a pipe (`stylecraft ui > log`) the line would wait in the buffer until exit
            print(
                f"feedback studio for {studio.root}: {server.url}  (Ctrl-C to stop; picks are saved on every click)",
                flush=True,
            )
            if args.open:
                webbrowser.open(server.url)
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
        finally:
            server.server_close()
    return 0
