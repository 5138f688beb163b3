"""``gradsae serve``: load one model and its SAEs, then serve the explorer page on 127.0.0.1 (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import opt
from ..errors import GradsaeError
from ..options import SAE_HELP, ModelOptions
from ..saes import DEFAULT_SAE


@dataclass(kw_only=True)
class ServeConfig(ModelOptions):
    """A local page for your model and SAEs: which latents drive an answer, how far to trust the scores, and what
    the answer does when you zero, clamp or steer them."""

    sae: list[str] = opt([DEFAULT_SAE], SAE_HELP + "; several, comma-separated (choose one per request in the page)")
    dashboard: list[str] = opt(
        [],
        "dashboard.json per SAE, comma-separated in --sae order (default: the one next to each SAE, if any; "
        "'none' = no cards)",
    )
    host: str = opt("127.0.0.1", "address to bind; anything but loopback exposes the model to your network")
    port: int = opt(8000, "port (0: any free port)", low=0)
    sessions: str = opt("", "folder for saved sessions (default: sessions/ in the gradsae cache folder)")
    max_new_tokens: int = opt(32, "tokens generated per answer", low=1)
    stop: str = opt("\\n", "stop strings, comma-separated ('\\n' = newline); empty = stop at EOS only")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> tuple[str, ...]:
    """The Host header values the app answers: the bound address and, on loopback, its usual names."""
    names = {host}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    if host in ("0.0.0.0", "::"):
        return ("*",)  # bound everywhere: the user asked for it (and was warned)
    return tuple(sorted(names))


def sessions_dir(cfg: ServeConfig) -> Path:
    from ..model import cache_dir

    return Path(cfg.sessions).expanduser() if cfg.sessions else cache_dir() / "sessions"


def build(cfg: ServeConfig, log=None):
    """Load the model and SAEs and return the app (no server started): what ``run`` serves and the tests drive."""
    from ..dashboard import check_dashboard, load_dashboard, resolve_dashboard
    from ..generate import parse_stop
    from ..model import load_model
    from ..options import start
    from ..saes import load_sae
    from .app import create_app
    from .engine import Explorer

    if not cfg.sae or any(not s.strip() for s in cfg.sae):
        raise GradsaeError("--sae is empty: give an SAE (e.g. smollm2/topk/L6), or several comma-separated")
    if len(set(cfg.sae)) != len(cfg.sae):
        raise GradsaeError("--sae names the same SAE twice: give each once")
    if cfg.dashboard and len(cfg.dashboard) != len(cfg.sae):
        raise GradsaeError(
            f"--dashboard has {len(cfg.dashboard)} entries for {len(cfg.sae)} SAEs: give one per SAE "
            "('' or 'none' for none), in --sae order"
        )
    sdir = sessions_dir(cfg)
    if sdir.exists() and not sdir.is_dir():
        raise GradsaeError(f"--sessions {str(sdir)!r} is a file: give a folder")
    dashboards = {}
    for i, s in enumerate(cfg.sae):  # before the model loads: a bad path fails at once
        d = cfg.dashboard[i] if cfg.dashboard else ""
        dashboards[s] = load_dashboard(d) if d and d.lower() != "none" else None if d else resolve_dashboard("", s)
    rt = start(cfg, "serve")
    model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
    dev = str(next(model.parameters()).device)
    saes = {s: load_sae(s, device=dev) for s in cfg.sae}
    for s, d in dashboards.items():
        if d is not None:
            check_dashboard(d, saes[s])
    rt.announce("serve")
    ex = Explorer(
        model, tok, saes, dashboards, max_new_tokens=cfg.max_new_tokens, stop=parse_stop(cfg.stop), model_spec=cfg.model
    )
    return create_app(ex, sdir, hosts=allowed_hosts(cfg.host), log=log)


def run(cfg: ServeConfig) -> None:
    import uvicorn

    if not is_loopback(cfg.host):
        print(
            f"gradsae serve: warning: --host {cfg.host} serves the model and your sessions to every machine that can "
            "reach this address, without authentication",
            file=sys.stderr,
        )
    app = build(cfg, log=lambda s: print(s, file=sys.stderr))
    where = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"gradsae serve: open http://{where}:{cfg.port}/ (Ctrl-C stops)", file=sys.stderr)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
