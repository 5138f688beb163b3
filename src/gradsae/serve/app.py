"""The HTTP side of ``gradsae serve``: a FastAPI app around one ``Explorer``.

Routes (JSON unless said): ``GET /`` the page; ``GET /api/info``; ``POST /api/rank``, ``/api/check``,
``/api/intervene`` queue model work and return ``{"job": id}`` (``GET /api/card`` too, with 202, when it must
first compute a dashboard); ``GET /api/jobs/{id}`` (state, progress, result or
error), ``POST /api/jobs/{id}/cancel``; ``GET /api/card?sae=&latent=``; ``GET /api/sessions``,
``GET|PUT /api/sessions/{name}``.

Bad input is answered 4xx with ``{"error": "one line"}``; the client never names a file (sessions are names checked
against ``SESSION_NAME`` inside the server's own folder); requests whose Host is not the bound one are refused (DNS
rebinding); the page loads nothing from the network and runs only its own script (CSP by hash).
"""

# no `from __future__ import annotations`: FastAPI reads the request-body classes from live annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Literal

from ..errors import GradsaeError
from .engine import EDIT_KINDS, EDIT_WHERE, Edit, Explorer
from .jobs import Jobs

SESSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_SESSION_BYTES = 20 << 20
MAX_PROMPT_CHARS = 100_000


# the server's own limits on top of the options' declared ranges (cost per request)
SERVER_CAPS = {"ig_steps": 256}


def _options_model():
    """``InfluenceOptions`` as a pydantic body, drawn from the dataclass's fields: the same names, defaults, choices
    and ranges as the command line (plus ``SERVER_CAPS``), unknown keys refused."""
    from pydantic import ConfigDict, Field, create_model

    from ..influence import InfluenceOptions

    fields: dict[str, Any] = {}
    for f in dataclasses.fields(InfluenceOptions):
        meta = f.metadata
        typ = Literal[tuple(meta["choices"])] if meta.get("choices") else type(f.default)
        fields[f.name] = (
            typ,
            Field(
                f.default, ge=meta.get("low"), le=SERVER_CAPS.get(f.name, meta.get("high")), description=meta["help"]
            ),
        )
    return create_model("Options", __config__=ConfigDict(extra="forbid"), **fields)


def _models():
    """The request bodies (pydantic, built on first use so that importing this module stays light)."""
    from pydantic import BaseModel, ConfigDict, Field

    Options = _options_model()

    class Text(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str = Field(max_length=MAX_PROMPT_CHARS)
        output: str = Field("", max_length=MAX_PROMPT_CHARS)
        sae: str
        options: Options = Options()

    class RankBody(Text):
        top: int = Field(20, ge=1, le=200)

    class CheckBody(Text):
        latents: list[int] = Field(min_length=1, max_length=64)

    class EditBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        latents: list[int] = Field(min_length=1, max_length=512)
        kind: Literal[EDIT_KINDS] = "zero"  # type: ignore[valid-type]
        value: float = Field(0.0, allow_inf_nan=False)
        where: Literal[EDIT_WHERE] = "all"  # type: ignore[valid-type]

    class InterveneBody(Text):
        edit: EditBody
        alphas: list[float] | None = Field(None, min_length=1, max_length=64)

    return Options, RankBody, CheckBody, InterveneBody


def _one_line(exc) -> str:
    """The first validation error as one line: where and what."""
    errs = exc.errors() if hasattr(exc, "errors") else []
    if not errs:
        return "the request is not valid JSON for this endpoint"
    e = errs[0]
    where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "request"
    msg = e.get("msg", "invalid")
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    return f"{where}: {msg}"


def create_app(
    explorer: Explorer, sessions_dir: str | Path, *, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), log=None
):
    """The app; ``hosts`` are the Host header values it answers (the bound address and its names)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from ..influence import InfluenceOptions
    from ..io import read_json, write_json
    from ..viz.serve_page import render_page

    Options, RankBody, CheckBody, InterveneBody = _models()
    sessions = Path(sessions_dir)
    jobs = Jobs(log=log)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        jobs.shutdown()

    app = FastAPI(title="gradsae serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    app.state.jobs = jobs
    app.state.explorer = explorer

    def fail(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return fail(422, _one_line(exc))

    @app.exception_handler(GradsaeError)
    async def _bad(request, exc):
        return fail(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return fail(exc.status_code, str(exc.detail))

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def options(o) -> InfluenceOptions:
        return InfluenceOptions(**o.model_dump())

    def info() -> dict:
        from ..model import model_name

        option_fields = dataclasses.fields(InfluenceOptions)
        return {
            "model": model_name(explorer.model),
            "model_spec": explorer.model_spec,
            "saes": [
                {
                    "name": n,
                    "d_sae": s.d_sae,
                    "hook": s.cfg.hook_name,
                    "dashboard": explorer.dashboards.get(n) is not None,
                }
                for n, s in explorer.saes.items()
            ],
            "choices": {
                **{f.name: f.metadata["choices"] for f in option_fields if f.metadata["choices"]},
                "kind": EDIT_KINDS,
                "where": EDIT_WHERE,
            },
            "defaults": {f.name: f.default for f in option_fields},
            "max_new_tokens": explorer.max_new_tokens,
        }

    @app.get("/", response_class=HTMLResponse)
    def page():
        html, policy = render_page(info())
        return HTMLResponse(html, headers={"Content-Security-Policy": policy})

    @app.get("/api/info")
    def api_info():
        return info()

    def queued(job) -> dict:
        return {"job": job.id}

    @app.post("/api/rank")
    def rank(body: RankBody):
        explorer.check_text(body.prompt, body.output or None)
        explorer.sae(body.sae)
        opts = options(body.options)
        return queued(
            jobs.submit(
                "rank", lambda p: explorer.rank(body.prompt, body.sae, body.output, opts, top=body.top, progress=p)
            )
        )

    @app.post("/api/check")
    def check(body: CheckBody):
        if not body.output.strip():
            raise GradsaeError("no answer to check against: rank the prompt first")
        explorer.check_text(body.prompt, body.output)
        explorer.check_latents(explorer.sae(body.sae), body.latents)
        opts = options(body.options)
        return queued(
            jobs.submit(
                "check", lambda p: explorer.check(body.prompt, body.output, body.sae, body.latents, opts, progress=p)
            )
        )

    @app.post("/api/intervene")
    def intervene(body: InterveneBody):
        explorer.check_text(body.prompt, body.output or None)
        explorer.check_latents(explorer.sae(body.sae), body.edit.latents)
        edit = Edit(tuple(body.edit.latents), body.edit.kind, body.edit.value, body.edit.where)
        opts = options(body.options)
        kind = "sweep" if body.alphas else "intervene"
        return queued(
            jobs.submit(
                kind,
                lambda p: explorer.intervene(
                    body.prompt, body.sae, edit, body.output, alphas=body.alphas, opts=opts, progress=p
                ),
            )
        )

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        j = jobs.get(job_id)
        if j is None:
            return fail(404, f"no job {job_id!r} (finished jobs are kept for a while; run it again)")
        return j.view()

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        j = jobs.cancel(job_id)
        if j is None:
            return fail(404, f"no job {job_id!r}")
        return j.view()

    @app.get("/api/card")
    def card(sae: str, latent: int):
        """The card at once, or (no dashboard yet) 202 and the job that computes one from the sample corpus."""
        explorer.check_latents(explorer.sae(sae), [latent])
        if explorer.has_cards(sae):
            return explorer.card(sae, latent)
        job = jobs.submit("card", lambda p: explorer.card(sae, latent, progress=p))
        return JSONResponse(queued(job), status_code=202)

    def session_path(name: str) -> Path:
        if not SESSION_NAME.match(name):
            raise GradsaeError(
                f"session name {name[:80]!r} is not allowed: use letters, digits, '.', '_' and '-' (up to 64)"
            )
        return sessions / f"{name}.json"

    @app.get("/api/sessions")
    def list_sessions():
        found = (
            sorted(sessions.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if sessions.is_dir() else []
        )
        return {"sessions": [p.stem for p in found if SESSION_NAME.match(p.stem)]}

    @app.get("/api/sessions/{name}")
    def open_session(name: str):
        p = session_path(name)
        if not p.is_file():
            return fail(404, f"no session {name!r}: save one first")
        return read_json(p)

    @app.put("/api/sessions/{name}")
    async def save_session(name: str, request: Request):
        p = session_path(name)
        raw = await request.body()
        if len(raw) > MAX_SESSION_BYTES:
            return fail(413, f"the session is {len(raw) >> 20} MiB; the limit is {MAX_SESSION_BYTES >> 20} MiB")
        try:
            state: Any = json.loads(raw)
        except ValueError:
            return fail(422, "the session is not valid JSON")
        if not isinstance(state, dict):
            return fail(422, "a session is a JSON object")
        sessions.mkdir(parents=True, exist_ok=True)
        write_json(p, state)
        return {"saved": name}

    return app
