"""Headless Chromium for the page tests (same flags as tests/test_report.py), plus a harness page that drives
a page inside an iframe with real DOM events and writes what it saw into its own DOM for --dump-dom."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def chrome(tmp_path, *args, timeout=120, fresh_profile=False):
    """Run headless Chromium with ``args``. One profile per test (localStorage survives between its runs),
    or a new one per call with ``fresh_profile``."""
    exe = chromium()
    if exe is None:
        pytest.fail("chromium not found: apt-get update && apt-get install -y chromium (make test does this)")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}" if fresh_profile else tmp_path / "profile"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--allow-file-access-from-files",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    env = dict(os.environ, HOME=str(tmp_path))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def drive(tmp_path, page, steps_js: str, name: str = "harness.html") -> dict:
    """Load ``page`` in an iframe of a harness page, run ``steps_js`` (a function body with ``w`` the iframe's
    window, ``d`` its document, ``out`` an object to fill, ``next(src)`` to reload the frame; it runs again on
    every load with ``out.loads`` counting) and return ``out``."""
    harness = tmp_path / name
    steps_js = steps_js.replace("</", "<\\/")  # the steps live inside the harness's own <script>
    harness.write_text(f"""<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="f" width="1200" height="800"></iframe>
<script>
var out = {{loads: 0}}, f = document.getElementById("f");
function next(src) {{ f.src = src + (src.indexOf("?") < 0 ? "?" : "&") + "n=" + out.loads; }}
f.addEventListener("load", function () {{
  out.loads += 1;
  var w = f.contentWindow, d = f.contentDocument;
  try {{ (function (w, d, out, next) {{ {steps_js} }})(w, d, out, next); }}
  catch (e) {{ out.error = String(e) + " " + (e.stack || ""); }}
  document.getElementById("result").textContent = JSON.stringify(out);
}});
next({json.dumps(page.resolve().as_uri())});
</script></body></html>""")
    res = chrome(tmp_path, "--virtual-time-budget=8000", "--dump-dom", harness.resolve().as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'<pre id="result">(.*?)</pre>', res.stdout, re.S)
    assert m, res.stdout[:1000]
    out = json.loads(html.unescape(m.group(1)))
    assert "error" not in out, out["error"]
    console = [ln for ln in res.stderr.splitlines() if "Uncaught" in ln or "Content Security Policy" in ln]
    assert not console, console
    return out
