"""``gradsae dashboard``: the command (``run``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path


from .. import memory
from ..distributed import Dist
from ..errors import GradsaeError
from ..io import refuse_foreign
from ..options import start
from .config import DashboardConfig
from .state import DashboardState, HIST_LO, HIST_PER_DECADE, SCHEMA, merge_states
from .model_pass import build_state, fingerprint
from .cards import DEFINITIONS, Dashboard, DashboardMeta, finalize, find_dashboard, load_dashboard


def _refuse_foreign(out: Path) -> None:
    """A dashboard.json / dashboard.html in --out that gradsae did not write is never replaced."""
    refuse_foreign(
        out, {"dashboard.json": lambda d: isinstance(d, dict) and d.get("schema") == SCHEMA}, "gradsae dashboard"
    )
    page = out / "dashboard.html"
    if page.exists() and 'class="gd-' not in page.read_text(encoding="utf-8", errors="replace"):
        raise GradsaeError(f"{page} was not written by gradsae dashboard: choose another --out")


def rows_per_batch(cfg: DashboardConfig, model, sae, layer: int, device: str) -> int:
    """``--batch-size`` checked against the memory estimate (``auto``: the most rows that fit)."""
    m = memory.ModelShape.of(model)
    lat = memory.sae_shape(sae)
    T = cfg.context_length
    influence = cfg.influence_tokens < 0 or cfg.influence_tokens >= T

    def passes(b: int) -> list[memory.Pass]:
        return memory.dashboard(m, lat, b, T, layer, influence)

    return memory.plan_rows(
        "the dashboard", passes, m, requested=cfg.batch_size, most=max(1, cfg.max_tokens // T), device=device
    )


def assemble(cfg: DashboardConfig, st: DashboardState, model, tok, sae, layer: int, seconds: float, runtime: dict):
    """The finished dashboard of a merged state: its metadata (with the full config) and every latent's card."""
    from ..model import model_name

    meta = DashboardMeta(
        schema=SCHEMA,
        model=model_name(model),
        sae=cfg.sae,
        hook=sae.cfg.hook_name or str(layer),
        d_sae=sae.d_sae,
        data=list(cfg.data),
        n_tokens=st.n_tokens,
        n_influence_tokens=st.n_influence_tokens,
        left=cfg.left,
        right=cfg.right,
        hist_lo_log10=HIST_LO,
        hist_per_decade=HIST_PER_DECADE,
        seconds=round(seconds, 1),
        sae_sha256=sae.digest(),
        config={**asdict(cfg), "runtime": runtime},
        definitions=DEFINITIONS,
    )
    return finalize(st, model, tok, sae, meta, n_promoted=cfg.n_promoted, n_neighbours=cfg.n_neighbours)


def run(cfg: DashboardConfig) -> Dashboard | None:
    from ..viz.dashboard_page import write_dashboard_page
    from ..saes import load_sae
    from ..io import atomic_write_text, output_lock
    from ..model import check_context_length, load_model
    from ..hooks import SPLICE_SITES
    from ..splice import check_compatible

    _refuse_foreign(Path(cfg.out))
    if cfg.render:
        found = find_dashboard(cfg.render)
        if found is None and not Path(cfg.render).expanduser().exists():
            raise GradsaeError(
                f"--render {cfg.render}: no dashboard.json(.gz) there and no bundled SAE of that name: give the file, "
                "its folder or a bundled SAE with a dashboard"
            )
        dash = load_dashboard(found if found is not None else cfg.render, "--render")
        with output_lock(cfg.out):
            page = write_dashboard_page(Path(cfg.out) / "dashboard.html", dash, max_latents=cfg.html_latents)
        print(f"wrote {page}")
        return dash
    rt = start(cfg, "dashboard")
    ranks = Dist("cpu")  # gloo: the ranks only meet at barriers, whatever device the model is on
    out = Path(cfg.out)
    with contextlib.ExitStack() as held:
        # one process: the folder is locked before the model loads and until the page is written, so a second
        # writer is refused at once and nothing can write between the pass and the page
        one = ranks.world == 1
        if one:
            held.enter_context(output_lock(out))
            from ..training.cache import clean_temp

            clean_temp(out)  # state or page temps a kill left behind
        t0 = time.perf_counter()
        model, tok = load_model(cfg.model, device=rt.device, dtype=cfg.dtype)
        check_context_length(model, cfg.context_length)
        sae = load_sae(cfg.sae, device=str(next(model.parameters()).device), dtype="float32")
        layer = check_compatible(model, sae, cfg.layer or None, SPLICE_SITES)
        cfg = dataclasses.replace(cfg, batch_size=rows_per_batch(cfg, model, sae, layer, rt.device))
        rt.announce("dashboard")
        state_dir = out / "state"
        try:
            with contextlib.nullcontext() if one else output_lock(out / "state" / f"rank{ranks.rank}"):
                st = build_state(
                    cfg,
                    model,
                    tok,
                    sae,
                    layer,
                    rank=ranks.rank,
                    world=ranks.world,
                    state_path=state_dir / f"rank{ranks.rank}.safetensors",
                )
            ranks.barrier()
            if ranks.rank != 0:
                return None
            for r in range(1, ranks.world):
                st = merge_states(
                    st, DashboardState.load(state_dir / f"rank{r}.safetensors", fingerprint(cfg, ranks.world, sae))
                )
        finally:
            ranks.close()
        if st.n_tokens == 0:
            raise GradsaeError(
                f"the corpus {cfg.data} gave no rows of {cfg.context_length} tokens: add data or lower --context-length"
            )
        dash = assemble(cfg, st, model, tok, sae, layer, time.perf_counter() - t0, rt.as_config())
        with contextlib.nullcontext() if one else output_lock(out):
            # compact separators: an indented file of 4096 latents is three times larger
            text = json.dumps(dash.to_json(), ensure_ascii=False, separators=(",", ":"))
            atomic_write_text(out / "dashboard.json", text)
            write_dashboard_page(out / "dashboard.html", dash, max_latents=cfg.html_latents)
    alive = sum(1 for r in dash.latents if r.count)
    print(
        f"dashboard: {st.n_tokens} tokens ({st.n_influence_tokens} with influence), {alive}/{sae.d_sae} latents "
        f"active, {dash.meta.seconds:.0f} s -> {out / 'dashboard.json'}, {out / 'dashboard.html'}"
    )
    return dash
