"""Dashboards: the heaps and reservoirs against brute force on toy tensors, the influence definition, merging
across ranks, resuming after a crash, the JSON round trip, escaping, and (marked ``browser``) the page in
headless Chromium: it renders, its search finds a latent, corpus text with <script> stays text."""

import html
import json
import math
import re
from dataclasses import asdict

import pytest
import torch

from gradsae.dashboard import (
    HIST_BINS,
    N_BANDS,
    SCHEMA,
    BatchEvidence,
    DashboardConfig,
    DashboardMeta,
    DashboardState,
    DEFINITIONS,
    HIST_LO,
    HIST_PER_DECADE,
    Heap,
    batch_evidence,
    build_state,
    card_data,
    dashboard_from_json,
    finalize,
    heap_push,
    hist_bin,
    merge_states,
    mix_key,
    moved_logprobs,
    update_state,
)
from gradsae.viz.dashboard_page import render_cards, render_dashboard_page, script_json

from conftest import make_tiny, random_sae

EVIL = "<script>alert(1)</script>"


def toy_batch(B=3, T=10, C=6, seed=0, rows=None):
    g = torch.Generator().manual_seed(seed)
    H = torch.rand(B, T, C, generator=g) * (torch.rand(B, T, C, generator=g) < 0.4) * 5
    H[:, 0] = 0
    ids = torch.randint(0, 50, (B, T), generator=g)
    rows = torch.arange(B) if rows is None else rows
    return BatchEvidence(ids, rows, H, B * (T - 1))


def new_state(C=6, n_top=3, n_band=2, n_infl=2, left=2, right=1, P=3):
    return DashboardState.new(C, n_top, n_band, n_infl, left + right + 1, P)


def test_heap_keeps_the_top_n_with_ties_broken_by_token_id():
    h = Heap.empty(1, 3, {"x": ((), torch.int32, -1)})
    h = heap_push(h, torch.tensor([[1.0, 5.0, 3.0]]), torch.tensor([[10, 11, 12]]), {"x": torch.tensor([[0, 1, 2]])})
    h = heap_push(
        h, torch.tensor([[5.0, 4.0, -math.inf]]), torch.tensor([[3, 20, 99]]), {"x": torch.tensor([[3, 4, 5]])}
    )
    assert h.score.tolist() == [[5.0, 5.0, 4.0]]
    assert h.gid.tolist() == [[3, 11, 20]]  # the tie at 5.0 goes to the lower token id
    assert h.data["x"].tolist() == [[3, 1, 4]]


def test_update_matches_brute_force():
    ev = toy_batch()
    st = update_state(new_state(), ev, left=2, right=1, seed=7)
    H, ids = ev.H, ev.ids
    B, T, C = H.shape
    assert st.n_tokens == B * (T - 1)
    assert torch.equal(st.count, (H > 0).sum((0, 1)))
    assert torch.equal(st.hist.sum(1), st.count)
    torch.testing.assert_close(st.act_sum, H.double().sum((0, 1)))
    for c in range(C):
        # top: the best rows by their maximum, one context per row
        mx, arg = H[:, :, c].max(1)
        order = sorted(range(B), key=lambda b: (-float(mx[b]), b))[:3]
        want = [(float(mx[b]), b * T + int(arg[b])) for b in order if mx[b] > 0]
        got = [(s, g) for s, g in zip(st.top.score[c].tolist(), st.top.gid[c].tolist()) if math.isfinite(s)]
        assert [g for _, g in got] == [g for _, g in want]
        torch.testing.assert_close(
            torch.tensor([s for s, _ in got]), torch.tensor([s for s, _ in want]), check_dtype=False
        )
        for j, (_, gid) in enumerate(got):  # window = ids and activations around the maximum
            b, t = divmod(gid, T)
            for o in range(-2, 2):
                w = int(st.top.data["ids"][c, j, o + 2])
                assert w == (int(ids[b, t + o]) if 0 <= t + o < T else -1)
                assert float(st.top.data["acts"][c, j, o + 2]) == (float(H[b, t + o, c]) if 0 <= t + o < T else 0.0)
        # bands: per half-decade band the 2 active tokens with the smallest hash key
        bb, tt = torch.nonzero(H[:, :, c] > 0, as_tuple=True)
        gids = bb * T + tt
        keys = mix_key(7, gids, torch.full_like(gids, c))
        bands = hist_bin(H[bb, tt, c]) // (HIST_BINS // N_BANDS)
        for band in range(N_BANDS):
            sel = (bands == band).nonzero().flatten()
            want_g = gids[sel][torch.argsort(keys[sel])][:2].tolist()
            row = c * N_BANDS + band
            got_g = [g for s, g in zip(st.band.score[row].tolist(), st.band.gid[row].tolist()) if math.isfinite(s)]
            assert got_g == want_g


def test_mix_key_is_deterministic_and_spread():
    g = torch.arange(10000)
    k1, k2 = mix_key(0, g, torch.zeros_like(g)), mix_key(0, g, torch.zeros_like(g))
    assert torch.equal(k1, k2) and k1.min() >= 0 and k1.max() < 2**31
    assert not torch.equal(k1, mix_key(1, g, torch.zeros_like(g)))
    assert abs(float((k1 < 2**30).float().mean()) - 0.5) < 0.03  # roughly uniform


def test_merge_of_two_halves_equals_one_pass():
    a = update_state(new_state(), toy_batch(seed=1, rows=torch.tensor([0, 2, 4])), left=2, right=1, seed=3)
    b = update_state(new_state(), toy_batch(seed=2, rows=torch.tensor([1, 3, 5])), left=2, right=1, seed=3)
    one = update_state(
        update_state(new_state(), toy_batch(seed=1, rows=torch.tensor([0, 2, 4])), left=2, right=1, seed=3),
        toy_batch(seed=2, rows=torch.tensor([1, 3, 5])),
        left=2,
        right=1,
        seed=3,
    )
    for m in (merge_states(a, b), merge_states(b, a)):
        for k, v in one.tensors().items():
            torch.testing.assert_close(m.tensors()[k], v, msg=k)
        assert m.n_tokens == one.n_tokens


def test_moved_logprobs_first_order():
    """act * (s_v - E_p[s]) is the derivative of log softmax(logits + act * s) at act = 0."""
    g = torch.Generator().manual_seed(0)
    logits, s = torch.randn(7, generator=g).double(), torch.randn(7, generator=g).double()
    eps = 1e-6
    num = ((logits + eps * s).log_softmax(-1) - logits.log_softmax(-1)) / eps
    got = moved_logprobs(torch.tensor(1.0), s, s, logits.log_softmax(-1))
    torch.testing.assert_close(got, num, atol=1e-3, rtol=1e-3)


def test_influence_is_grad_times_act_of_next_token_loglik():
    model, tok = make_tiny("llama")
    sae = random_sae(d_sae=64, arch="topk", k=8, layer=1, bias=0.2)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    ev = batch_evidence(model, sae, 1, ids, torch.arange(2), skip_first=1, influence=True, n_pred=3)
    # independent: dL/dZ at block 1 on the clean model, mapped to latents by the decoder
    from gradsae.capture import ResidualCapture

    with ResidualCapture(model, [1], grad=True) as cap:
        logp = model(input_ids=ids).logits.log_softmax(-1)
        logp[:, :-1].gather(-1, ids[:, 1:, None]).sum().backward()
        Z, dZ = cap.acts[1], cap.acts[1].grad
    H = sae.encode(Z.detach())
    Hl = H.clone().requires_grad_(True)
    (dH,) = torch.autograd.grad(sae.decode(Hl), Hl, grad_outputs=dZ)
    want = H * dH
    want[:, :1] = 0
    torch.testing.assert_close(ev.g, want, atol=1e-4, rtol=1e-3)
    assert ev.H[:, 0].abs().sum() == 0 and ev.pred.shape == (2, 12, 3)
    torch.testing.assert_close(
        ev.next_logp[:, :-1], logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1).detach(), atol=1e-4, rtol=1e-4
    )


# ---- on a tiny model through the corpus reader ---------------------------------------------------


def _cfg(tmp_path, **kw):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        lines = [f"Line {i}: the quick brown fox {i % 7} jumps over {EVIL} the lazy dog number {i}." for i in range(60)]
        corpus.write_text("\n".join(lines))
    base = dict(
        sae="tiny",
        data=[str(corpus)],
        max_tokens=48 * 14,
        influence_tokens=48 * 6,
        context_length=48,
        batch_size=3,
        n_top=4,
        n_band=1,
        n_influence=3,
        left=5,
        right=2,
        n_predictions=3,
        checkpoint_every=1,
        progress=False,
        seed=1,
    )
    base.update(kw)
    return DashboardConfig(**base)


def _meta(cfg, sae="tiny", model="tiny-llama") -> DashboardMeta:
    """The meta of a test dashboard built with ``cfg`` (the fields ``finalize`` does not fill)."""
    return DashboardMeta(
        schema=SCHEMA,
        model=model,
        sae=sae,
        hook="blocks.1.hook_resid_post",
        d_sae=64,
        data=cfg.data,
        n_tokens=0,
        n_influence_tokens=0,
        left=cfg.left,
        right=cfg.right,
        hist_lo_log10=HIST_LO,
        hist_per_decade=HIST_PER_DECADE,
        seconds=0.0,
        config=asdict(cfg),
        definitions=DEFINITIONS,
    )


@pytest.fixture(scope="module")
def tiny_pair():
    model, tok = make_tiny("llama")
    sae = random_sae(d_sae=64, arch="topk", k=6, layer=1, bias=0.2)
    return model, tok, sae


def _same(a: DashboardState, b: DashboardState):
    assert a.n_tokens == b.n_tokens and a.n_influence_tokens == b.n_influence_tokens
    for k, v in a.tensors().items():
        if k.endswith(".gid") or k in ("count", "hist") or "ids" in k or "pred" == k.split(".")[-1]:
            assert torch.equal(b.tensors()[k], v), k
        else:
            torch.testing.assert_close(b.tensors()[k], v, atol=1e-4, rtol=1e-4, msg=k)


def test_resume_after_a_crash_gives_the_same_state(tmp_path, tiny_pair):
    model, tok, sae = tiny_pair
    cfg = _cfg(tmp_path)
    full = build_state(cfg, model, tok, sae, 1)
    path = tmp_path / "state.safetensors"
    partial = build_state(cfg, model, tok, sae, 1, state_path=path, stop_after=2)  # "killed" after 2 batches
    assert partial.rows_done == 6 and path.exists()
    resumed = build_state(cfg, model, tok, sae, 1, state_path=path)
    assert resumed.rows_done == full.rows_done == 14
    _same(full, resumed)
    # a state from other settings is refused, not silently mixed
    from gradsae.errors import GradsaeError

    with pytest.raises(GradsaeError, match="other settings"):
        build_state(_cfg(tmp_path, seed=2), model, tok, sae, 1, state_path=path)


def test_a_resume_with_other_weights_or_another_corpus_is_refused(tmp_path, tiny_pair):
    """Names are not enough: the same SAE path with other weights, or the corpus file with other text."""
    import copy

    from gradsae.errors import GradsaeError

    model, tok, sae = tiny_pair
    cfg = _cfg(tmp_path)
    path = tmp_path / "state.safetensors"
    build_state(cfg, model, tok, sae, 1, state_path=path, stop_after=2)
    other = copy.deepcopy(sae)
    with torch.no_grad():
        other.W_dec.mul_(1.5)
    with pytest.raises(GradsaeError, match="other settings"):
        build_state(cfg, model, tok, other, 1, state_path=path)
    corpus = cfg.data[0]
    with open(corpus, "a") as f:
        f.write("\nanother document entirely")
    with pytest.raises(GradsaeError, match="other settings"):
        build_state(cfg, model, tok, sae, 1, state_path=path)


def test_two_ranks_merged_equal_one(tmp_path, tiny_pair):
    model, tok, sae = tiny_pair
    cfg = _cfg(tmp_path)
    one = build_state(cfg, model, tok, sae, 1)
    r0 = build_state(cfg, model, tok, sae, 1, rank=0, world=2)
    r1 = build_state(cfg, model, tok, sae, 1, rank=1, world=2)
    assert r0.rows_done == r1.rows_done == 7
    _same(one, merge_states(r0, r1))


@pytest.fixture(scope="module")
def tiny_dashboard(tmp_path_factory, tiny_pair):
    model, tok, sae = tiny_pair
    tmp = tmp_path_factory.mktemp("dash")
    cfg = _cfg(tmp)
    st = build_state(cfg, model, tok, sae, 1)
    meta = _meta(cfg, sae=EVIL, model="tiny-llama")
    return finalize(st, model, tok, sae, meta, n_promoted=4, n_neighbours=3)


def test_records_round_trip_and_make_sense(tiny_dashboard):
    d = tiny_dashboard
    obj = json.loads(json.dumps(d.to_json()))
    d2 = dashboard_from_json(obj)
    assert d2.to_json() == d.to_json()
    assert d.meta.n_tokens == 14 * 47 and d.meta.n_influence_tokens == 6 * 47
    alive = [r for r in d.latents if r.count]
    assert alive
    for r in alive:
        assert 0 < r.density <= 1 and r.top and r.top[0].value == r.max_act
        assert [c.value for c in r.top] == sorted((c.value for c in r.top), reverse=True)
        assert sum(r.hist) == r.count
        for c in r.top:
            assert c.acts[c.at] == pytest.approx(c.value, rel=1e-2)
        for c in r.bands:
            assert 0 <= c.percentile <= 100 and c.value <= r.max_act
        for c in r.influence:
            assert c.infl[c.at] == pytest.approx(c.value, rel=1e-2) and c.row < 6  # influence rows come first
        assert len(r.promoted) == 4 and len(r.neighbours) == 3 and r.latent not in [n.latent for n in r.neighbours]
    card = card_data(d, alive[0].latent)
    assert card["latent"] == alive[0].latent and card["top"] and isinstance(card["top"][0]["tokens"][0], str)
    assert card_data(d, 10_000) is None


def test_html_escapes_corpus_text_and_has_strict_csp(tiny_dashboard):
    page = render_dashboard_page(tiny_dashboard)
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the SAE name (meta) is hostile
    assert "<script" not in page.replace('<script type="application/json" id="index">', "").replace("<script>", "", 1)
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1))
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "sha256-" in csp
    assert "http://" not in page and "https://" not in page
    frag = render_cards(tiny_dashboard, [r.latent for r in tiny_dashboard.latents if r.count][:2])
    assert frag.count('class="gd-card"') == 2 and EVIL not in frag
    # a token that is itself markup stays escaped in cards and in the JSON index
    d = tiny_dashboard
    tid = d.latents[[r.count > 0 for r in d.latents].index(True)].top[0].ids[d.meta.left]
    saved = d.tokens[tid]
    d.tokens[tid] = EVIL
    try:
        page = render_dashboard_page(d)
    finally:
        d.tokens[tid] = saved
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert json.loads(re.search(r'id="index">(.*?)</script>', page, re.S).group(1))


def test_script_json_cannot_close_the_block():
    s = script_json({"x": "</script><!-- \u2028"})
    assert "</" not in s and "<!--" not in s and json.loads(s) == {"x": "</script><!-- \u2028"}


# ---- headless Chromium ----------------------------------------------------------------------------


@pytest.mark.browser
def test_dashboard_page_renders_searches_and_keeps_script_as_text(tmp_path, tiny_pair):
    from chromium import browser, open_page

    model, tok, sae = tiny_pair
    cfg = _cfg(tmp_path, left=24, right=4)
    st = build_state(cfg, model, tok, sae, 1)
    meta = _meta(cfg, sae="tiny", model="tiny-llama")
    d = finalize(st, model, tok, sae, meta)
    alive = [r.latent for r in d.latents if r.count]
    target = alive[len(alive) // 2]
    path = tmp_path / "dashboard.html"
    path.write_text(render_dashboard_page(d))
    visible = "cs => cs.filter(c => getComputedStyle(c).display !== 'none').map(c => c.getAttribute('data-latent'))"
    with browser(1200, 1400) as page:
        open_page(page, path)
        assert page.get_attribute("body", "data-ready") == "1"
        assert page.get_attribute("body", "data-js-error") is None
        assert page.text_content("#count") == str(len(alive))
        page.fill("#q", str(target))  # typing fires the input event the search listens to
        assert page.text_content("#count") == "1"
        assert page.eval_on_selector_all("#cards > .gd-card", visible) == [str(target)]
        page.fill("#q", "zzzz-no-such-token")
        assert page.text_content("#count") == "0"
        # corpus lines hold <script>alert(1)</script>: shown as text in contexts, never parsed as elements
        assert page.locator("script").count() == 2
        with_script_text = page.eval_on_selector_all(
            ".gd-ctx", "cs => cs.filter(c => c.textContent.indexOf('<script>') >= 0).length"
        )
        assert with_script_text > 0
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not page.problems, page.problems


# ---- the command, end to end on a tiny model saved to disk ----------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from gradsae.saes import save_saelens

    tmp = tmp_path_factory.mktemp("cli")
    model, tok = make_tiny("llama")
    model.save_pretrained(tmp / "m")
    tok.save_pretrained(tmp / "m")
    save_saelens(random_sae(d_sae=64, arch="topk", k=6, layer=1, bias=0.2), tmp / "sae")
    (tmp / "corpus.txt").write_text(
        "\n".join(f"Line {i}: the fox {i % 7} jumps over {EVIL} the dog." for i in range(80))
    )
    return tmp


def _dash_args(d, out, *more):
    return [
        "dashboard",
        "--model",
        str(d / "m"),
        "--sae",
        str(d / "sae"),
        "--data",
        str(d / "corpus.txt"),
        "--max-tokens",
        str(48 * 16),
        "--influence-tokens",
        str(48 * 6),
        "--context-length",
        "48",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "1",
        "--no-progress",
        "--out",
        str(out),
        *more,
    ]


def _without_timing(obj):
    obj["meta"]["seconds"] = 0
    obj["meta"]["config"]["out"] = ""
    return obj


def test_kill_9_and_rerun_gives_the_same_dashboard(tiny_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    from gradsae.cli import main

    assert main(_dash_args(tiny_dir, tiny_dir / "clean")) == 0
    clean = json.loads((tiny_dir / "clean" / "dashboard.json").read_text())
    assert (tiny_dir / "clean" / "dashboard.html").exists()
    out = tiny_dir / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen(
        [sys.executable, "-m", "gradsae", *_dash_args(tiny_dir, out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = out / "state" / "rank0.safetensors"
    t0 = time.time()
    while not state.exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "dashboard.json").exists(), "killed too late to test resuming"
    assert main(_dash_args(tiny_dir, out)) == 0
    assert _without_timing(json.loads((out / "dashboard.json").read_text())) == _without_timing(clean)


def test_explain_and_influence_show_cards(tiny_dir):
    import shutil

    from gradsae.cli import main
    from gradsae.dashboard import find_dashboard

    out = tiny_dir / "dash-for-cards"
    assert main(_dash_args(tiny_dir, out)) == 0
    assert find_dashboard(str(tiny_dir / "sae")) is None
    shutil.copy(out / "dashboard.json", tiny_dir / "sae" / "dashboard.json")
    try:
        assert find_dashboard(str(tiny_dir / "sae")) == tiny_dir / "sae" / "dashboard.json"
        common = ["--model", str(tiny_dir / "m"), "--sae", str(tiny_dir / "sae")]
        assert (
            main(
                [
                    "influence",
                    *common,
                    "--prompt",
                    "the fox",
                    "--output",
                    " jumps",
                    "--top",
                    "4",
                    "--out",
                    str(tiny_dir / "inf.json"),
                ]
            )
            == 0
        )
        ex = json.loads((tiny_dir / "inf.json").read_text())["examples"][0]
        listed = {r["latent"] for r in ex["top"]}
        assert listed and listed <= {int(c) for c in ex["cards"]}
        assert all(ex["cards"][str(c)]["latent"] == c for c in listed)
        page = tiny_dir / "explain.html"
        assert (
            main(
                ["explain", "the fox", "--output", " jumps", *common, "--top", "3", "--mask-k", "", "--html", str(page)]
            )
            == 0
        )
        html_text = page.read_text()
        assert html_text.count('class="gd-card"') >= 1 and EVIL not in html_text
        assert (
            main(
                [
                    "influence",
                    *common,
                    "--prompt",
                    "x",
                    "--output",
                    "y",
                    "--dashboard",
                    "none",
                    "--out",
                    str(tiny_dir / "inf2.json"),
                ]
            )
            == 0
        )
        assert "cards" not in json.loads((tiny_dir / "inf2.json").read_text())["examples"][0]
        assert main(["influence", *common, "--prompt", "x", "--dashboard", str(tiny_dir / "missing.json")]) == 2
    finally:
        (tiny_dir / "sae" / "dashboard.json").unlink()


@pytest.mark.slow
def test_bundled_saes_ship_dashboards_and_explain_shows_their_cards(tmp_path):
    from gradsae.cli import main
    from gradsae.dashboard import find_dashboard, load_dashboard
    from gradsae.saes import bundled_saes

    total = 0
    shipped = {spec: folder for spec, folder in bundled_saes().items() if spec.startswith("smollm2/topk/")}
    assert sorted(shipped) == ["smollm2/topk/L14", "smollm2/topk/L22", "smollm2/topk/L6"]  # the Table-4 set
    for spec, folder in shipped.items():
        path = find_dashboard(spec)
        assert path is not None and path.parent == folder, spec
        total += path.stat().st_size
        d = load_dashboard(path)
        assert (
            d.meta.d_sae == 4096 and d.meta.n_tokens > 10_000 and d.meta.hook == f"blocks.{spec[14:]}.hook_resid_post"
        )
        alive = [r for r in d.latents if r.count]
        assert len(alive) > 1000 and all(r.top for r in alive)
        assert sum(1 for r in alive if r.influence) > 500
    assert total <= 10e6  # issue 11: at most 10 MB of bundled dashboards
    page = tmp_path / "explain.html"
    assert (
        main(
            [
                "explain",
                "The capital of France is",
                "--output",
                " Paris",
                "--top",
                "3",
                "--mask-k",
                "",
                "--html",
                str(page),
                "--json",
                str(tmp_path / "explain.json"),
            ]
        )
        == 0
    )
    cards = json.loads((tmp_path / "explain.json").read_text())["cards"]
    assert len(cards) >= 3 and page.read_text().count('class="gd-card"') == len(cards)


def test_torchrun_two_ranks_write_the_same_dashboard(tiny_dir):
    import os
    import subprocess
    import sys

    from gradsae.cli import main

    one = tiny_dir / "one-rank"
    assert main(_dash_args(tiny_dir, one)) == 0
    two = tiny_dir / "two-ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "gradsae",
            *_dash_args(tiny_dir, two),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a = _without_timing(json.loads((one / "dashboard.json").read_text()))
    b = _without_timing(json.loads((two / "dashboard.json").read_text()))
    assert sorted((two / "state").glob("rank*.safetensors")) == [
        two / "state" / "rank0.safetensors",
        two / "state" / "rank1.safetensors",
    ]
    # same contexts and counts; activations agree to the rounding of the file (batches differ per rank)
    for ra, rb in zip(a["latents"], b["latents"]):
        assert (ra["count"], ra["hist"]) == (rb["count"], rb["hist"])
        assert [(c["row"], c["pos"], c["ids"]) for c in ra["top"]] == [
            (c["row"], c["pos"], c["ids"]) for c in rb["top"]
        ]
        assert [(c["row"], c["pos"]) for c in ra["influence"]] == [(c["row"], c["pos"]) for c in rb["influence"]]
        assert [(c["row"], c["pos"]) for c in ra["bands"]] == [(c["row"], c["pos"]) for c in rb["bands"]]
    assert a["meta"]["n_tokens"] == b["meta"]["n_tokens"]


def test_render_only_rewrites_the_page_from_json(tiny_dir):
    from gradsae.cli import main

    out = tiny_dir / "render-src"
    assert main(_dash_args(tiny_dir, out)) == 0
    again = tiny_dir / "rendered"
    assert main(["dashboard", "--render", str(out / "dashboard.json"), "--out", str(again)]) == 0
    assert (again / "dashboard.html").read_text() == (out / "dashboard.html").read_text()
    assert not (again / "dashboard.json").exists()
    assert main(["dashboard", "--render", str(tiny_dir / "nope.json"), "--out", str(again)]) == 2


def test_shrink_keeps_fewer_contexts_and_every_token_it_needs(tiny_dashboard):
    from gradsae.dashboard import shrink

    s = shrink(tiny_dashboard, n_top=2, n_bands=1, n_influence=1, n_moved=2, digits=2)
    assert len(s.tokens) <= len(tiny_dashboard.tokens)
    for r in s.latents:
        assert len(r.top) <= 2 and len(r.bands) <= 1 and len(r.influence) <= 1
        assert all(b.percentile < 90 for b in r.bands)
        for c in r.top + r.bands + r.influence:
            assert all(i < 0 or i in s.tokens for i in c.ids)
            assert all(v == 0 or len(f"{abs(v):e}".split("e")[0].rstrip("0").replace(".", "")) <= 2 for v in c.acts)
    assert dashboard_from_json(json.loads(json.dumps(s.to_json()))).to_json() == s.to_json()
    assert tiny_dashboard.latents[0].top == tiny_dashboard.latents[0].top  # the original is untouched
    full = [r for r in tiny_dashboard.latents if len(r.top) > 2]
    assert full and len(full[0].top) > 2


def test_a_dashboard_of_another_sae_is_refused():
    import copy
    import dataclasses

    from gradsae import load_sae
    from gradsae.dashboard import check_dashboard, find_dashboard, load_dashboard
    from gradsae.errors import GradsaeError

    dash = load_dashboard(find_dashboard("smollm2/topk/L6"))
    own, other = load_sae("smollm2/topk/L6"), load_sae("smollm2/topk/L14")
    check_dashboard(dash, own)  # the bundled pair: same width and hook
    with pytest.raises(GradsaeError, match="latents at blocks.6.hook_resid_post"):
        check_dashboard(dash, other)
    signed = copy.copy(dash)
    signed.meta = dataclasses.replace(dash.meta, sae_sha256=own.digest())
    check_dashboard(signed, load_sae("smollm2/topk/L6", dtype="float32"))  # the digest ignores the dtype
    moved = copy.deepcopy(own)
    with torch.no_grad():
        moved.W_dec.mul_(1.01)
    with pytest.raises(GradsaeError, match="other weights"):
        check_dashboard(signed, moved)


def test_a_damaged_dashboard_json_is_one_line(tmp_path):
    import json

    from gradsae.dashboard import find_dashboard, load_dashboard
    from gradsae.errors import GradsaeError

    src = find_dashboard("smollm2/topk/L6")
    obj = json.loads(load_dashboard_text(src))
    for lat in obj["latents"][:3]:
        lat.pop("top")
    (tmp_path / "dashboard.json").write_text(json.dumps(obj))
    with pytest.raises(GradsaeError, match="is damaged"):
        load_dashboard(tmp_path / "dashboard.json")


def load_dashboard_text(path):
    import gzip

    path = str(path)
    return gzip.open(path, "rt").read() if path.endswith(".gz") else open(path).read()


def test_a_second_writer_is_refused_before_the_model_loads(tmp_path, capsys):
    from gradsae import cli
    from gradsae.io import output_lock

    with output_lock(tmp_path / "d"):
        assert cli.main(["dashboard", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "no-such-model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another gradsae run is writing" in err[0]


def test_characters_split_over_several_tokens_are_shown_whole(tmp_path, tiny_pair):
    """Byte-level tokens: an emoji or a Hebrew letter is 2-4 tokens; each piece decoded alone is U+FFFD. The
    cards show the whole character on the token that completes it, and the JSON round trip keeps that."""
    import json

    from gradsae.dashboard import dashboard_from_json
    from gradsae.viz.dashboard_page import card_view

    model, tok, sae = tiny_pair
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"Line {i}: café 😀 שלום and naïve text number {i}." for i in range(60)))
    cfg = _cfg(tmp_path, data=[str(corpus)])
    st = build_state(cfg, model, tok, sae, 1)
    meta = _meta(cfg, sae="s", model="m")
    dash = finalize(st, model, tok, sae, meta)
    back = dashboard_from_json(json.loads(json.dumps(dash.to_json())))
    shown = ""
    for d in (dash, back):
        for r in d.latents:
            v = card_view(d, r)
            for group in ("top", "bands", "influence"):
                for c in v[group]:
                    shown += "".join(t["text"] for t in c["tokens"])
    assert "\ufffd" not in shown
    assert any(ch in shown for ch in ("😀", "ש", "é", "ï"))
    assert '"texts": null' not in json.dumps(dash.to_json())
