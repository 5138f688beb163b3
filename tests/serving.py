"""A FastAPI app served by uvicorn on a free loopback port in a background thread (the real server, for the API
and Playwright tests), and a small JSON client on urllib."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started and time.monotonic() < end:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def call(base: str, method: str, path: str, body=None, headers=None, raw: bytes | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one request; 4xx/5xx answers are returned, not raised."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"text": text.decode(errors="replace")}


def result(base: str, path: str, body: dict, timeout: float = 120) -> dict:
    """Submit a job and poll it to its end; returns the job's final view."""
    status, sub = call(base, "POST", path, body)
    assert status == 200, sub
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        _, job = call(base, "GET", f"/api/jobs/{sub['job']}")
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {sub['job']} did not end in {timeout} s")
