"""gradsae serve without a browser: the add (steering) edit, KV-cached edited generation against the uncached loop,
the Explorer's views, and the HTTP API (a real uvicorn server on a tiny model): validation, jobs, cancellation,
sessions, host checks."""

import itertools
import json

import pytest
import torch

from gradsae import GradsaeError, RowEdit
from gradsae.generate import generate_edited
from gradsae.serve import Edit, Explorer
from gradsae.serve.engine import rank_agreement
from gradsae.splice import LatentEdits

from conftest import make_tiny, random_sae
from serving import call, result, serving

PROMPT = "the cat sat on"


def test_add_edit_moves_the_reconstruction_along_the_decoder_row():
    sae = random_sae(d_sae=32)
    H = torch.rand(1, 3, 32)
    e = LatentEdits.from_rows([RowEdit(add={4: 2.5, 7: -1.0}, at=1)], 32, prompt_len=3)
    out = e.apply(H, offset=0)
    assert torch.equal(out[0, 0], H[0, 0])  # before the edit's start
    delta = sae.decode(out[0, 1:]) - sae.decode(H[0, 1:])
    want = 2.5 * sae.W_dec[4] - 1.0 * sae.W_dec[7]
    assert torch.allclose(delta, want.expand_as(delta), atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_edited_generation_with_the_kv_cache_equals_the_uncached_loop(arch):
    """Every edit kind at every position choice: the cached generation is the uncached one, token for token, and
    the edit changes the answer (so the comparison is not between two unedited runs)."""
    model, tok = make_tiny(arch)
    sae = random_sae(bias=0.2)
    n_prompt = len(tok(PROMPT)["input_ids"])
    for kind, where in itertools.product(("zero", "clamp", "add"), ("prompt", "generated", "all")):
        lat = tuple(range(256)) if kind == "zero" else tuple(range(0, 256, 4))  # strong enough to change the answer
        edit = Edit(lat, kind, 0.0 if kind == "zero" else 6.0, where)
        rows = [None, edit.row(n_prompt)]
        kw = dict(max_new_tokens=8, stop=())
        cached = generate_edited(model, tok, sae, [PROMPT] * 2, rows, use_cache=True, **kw)
        loop = generate_edited(model, tok, sae, [PROMPT] * 2, rows, use_cache=False, **kw)
        assert cached.tokens == loop.tokens, (kind, where)
        assert cached.tokens[1] != cached.tokens[0], (kind, where)


def test_edit_positions():
    assert Edit((1,), "zero", where="prompt").row(5).until == 5
    assert Edit((1,), "clamp", 2.0, "generated").row(5).at == 5
    r = Edit((1, 2), "add", 3.0, "all").row(5, value=-1.0)
    assert r.add == {1: -1.0, 2: -1.0} and r.at == 0 and r.until is None
    for bad, match in (
        (dict(latents=()), "no latents"),
        (dict(latents=(1,), kind="scale"), "unknown edit"),
        (dict(latents=(1,), where="middle"), "unknown positions"),
    ):
        with pytest.raises(GradsaeError, match=match):
            Edit(**bad)


def test_rank_agreement():
    s = torch.tensor([0.0, 3.0, 2.0, 1.0, 0.0])
    same = rank_agreement(s, s, k=2)
    assert same["spearman"] == 1.0 and same["top_overlap"] == 2 and same["latents"] == 3
    rev = rank_agreement(s, torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0]), k=1)
    assert rev["spearman"] == -1.0 and rev["top_overlap"] == 0
    assert rank_agreement(torch.zeros(4), torch.zeros(4))["spearman"] is None


@pytest.fixture(scope="module")
def explorer():
    model, tok = make_tiny("llama")
    return Explorer(model, tok, {"tiny": random_sae(bias=0.1)}, {"tiny": None}, max_new_tokens=6, stop=())


def test_explorer_views(explorer):
    v = explorer.rank(PROMPT, "tiny", top=5)
    assert v["output"] and len(v["top"]) == 5 and len(v["baseline_top"]) == 5
    assert [r["gradsae_rank"] for r in v["top"]] == [1, 2, 3, 4, 5]
    assert [r["activation_rank"] for r in v["baseline_top"]] == [1, 2, 3, 4, 5]
    assert v["reproduce"]["cli"].startswith("gradsae explain")
    top = [r["latent"] for r in v["top"][:2]]
    chk = explorer.check(PROMPT, v["output"], "tiny", top)
    assert [r["latent"] for r in chk["rows"]] == top
    assert all(r["exact"] != 0 for r in chk["rows"])  # active latents: zeroing them moves the target
    # adding 0 is no edit: the swept point at alpha 0 is the default, answer and target
    sw = explorer.intervene(PROMPT, "tiny", Edit(tuple(top), "add"), v["output"], alphas=[-5.0, 0.0, 5.0])
    assert [p["value"] for p in sw["points"]] == [-5.0, 0.0, 5.0]
    assert sw["points"][1]["answer"] == sw["default"]["answer"] == v["output"]
    assert sw["points"][1]["target"] == pytest.approx(sw["default"]["target"], abs=1e-6)
    assert sw["default"]["target"] == pytest.approx(v["target_value"], abs=1e-4)
    assert sw["points"][0]["target"] != sw["default"]["target"]
    # no dashboard: the first card computes one from the bundled sample corpus, the next ones reuse it
    assert not explorer.has_cards("tiny")
    seen = []
    card = explorer.card("tiny", top[0], progress=lambda d, t, u: seen.append((d, t, u)))
    assert card["latent"] == top[0] and card["source"]["data"] == ["sample"]
    assert 2048 - 32 <= card["source"]["tokens"] <= 2048  # 32 rows of 64, the first token of each row skipped
    assert card["top"] and seen[-1] == (2048, 2048, "tokens")
    assert explorer.has_cards("tiny") and explorer.card("tiny", top[1])["latent"] == top[1]
    with pytest.raises(GradsaeError, match="unknown latent 999"):
        explorer.intervene(PROMPT, "tiny", Edit((999,)))
    with pytest.raises(GradsaeError, match="too long"):
        explorer.rank("x" * 600, "tiny")


def test_every_reproduce_line_runs_and_gives_the_same_result(explorer, monkeypatch):
    monkeypatch.setattr(Explorer, "load", classmethod(lambda cls, *a, **kw: explorer))  # no second model load
    v = explorer.rank(PROMPT, "tiny", top=3)
    top = [r["latent"] for r in v["top"]]
    views = {
        "view": (v, "top"),
        "res": (explorer.intervene(PROMPT, "tiny", Edit(tuple(top), "clamp", 4.0, "generated"), v["output"]), "points"),
        "check": (explorer.check(PROMPT, v["output"], "tiny", top[:1]), "rows"),
        "card": (explorer.card("tiny", top[0]), "top"),
    }
    for name, (out, key) in views.items():
        ns = {}
        exec(out["reproduce"]["python"], ns)
        assert ns[name][key] == out[key], name


@pytest.fixture(scope="module")
def server(explorer, tmp_path_factory):
    from gradsae.serve.app import create_app

    app = create_app(explorer, tmp_path_factory.mktemp("sessions"))
    with serving(app) as base:
        yield base


def test_api_card_without_a_dashboard_is_a_job(tmp_path):
    from gradsae.serve.app import create_app

    model, tok = make_tiny("llama")
    ex = Explorer(model, tok, {"tiny": random_sae(bias=0.1)}, {"tiny": None}, sample_tokens=256)
    with serving(create_app(ex, tmp_path)) as base:
        code, sub = call(base, "GET", "/api/card?sae=tiny&latent=3")
        assert code == 202 and "job" in sub
        import time

        for _ in range(600):
            _, job = call(base, "GET", f"/api/jobs/{sub['job']}")
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.05)
        assert job["state"] == "done" and job["result"]["latent"] == 3, job
        code, card = call(base, "GET", "/api/card?sae=tiny&latent=4")  # now at once
        assert code == 200 and card["latent"] == 4 and 0 < card["source"]["tokens"] <= 256


def test_api_rank_check_intervene(server):
    job = result(server, "/api/rank", {"prompt": PROMPT, "sae": "tiny", "top": 4})
    assert job["state"] == "done", job
    v = job["result"]
    body = {"prompt": PROMPT, "output": v["output"], "sae": "tiny"}
    lat = [v["top"][0]["latent"]]
    chk = result(server, "/api/check", dict(body, latents=lat))
    assert chk["state"] == "done" and chk["result"]["rows"][0]["latent"] == lat[0]
    ed = result(
        server, "/api/intervene", dict(body, edit={"latents": lat, "kind": "clamp", "value": 50, "where": "all"})
    )
    assert ed["state"] == "done" and ed["result"]["default"]["answer"] == v["output"]


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/rank", {"prompt": "   ", "sae": "tiny"}, 400, "empty prompt"),
        ("/api/rank", {"prompt": "x" * 600, "sae": "tiny"}, 400, "too long"),
        ("/api/rank", {"prompt": PROMPT, "sae": "other"}, 400, "unknown SAE 'other'"),
        ("/api/rank", {"prompt": PROMPT, "sae": "tiny", "options": {"target": "loss"}}, 422, "options.target"),
        ("/api/rank", {"prompt": PROMPT, "sae": "tiny", "top": 0}, 422, "top"),
        # the options body is drawn from InfluenceOptions: its ranges, plus the server's cap, and no unknown keys
        ("/api/rank", {"prompt": PROMPT, "sae": "tiny", "options": {"ig_steps": 0}}, 422, "options.ig_steps"),
        ("/api/rank", {"prompt": PROMPT, "sae": "tiny", "options": {"ig_steps": 1000}}, 422, "options.ig_steps"),
        ("/api/rank", {"prompt": PROMPT, "sae": "tiny", "options": {"exact_latents": -1}}, 422, "exact_latents"),
        ("/api/rank", {"prompt": PROMPT, "sae": "tiny", "options": {"colour": "red"}}, 422, "options.colour"),
        ("/api/rank", {"sae": "tiny"}, 422, "prompt: Field required"),
        ("/api/check", {"prompt": PROMPT, "sae": "tiny", "latents": [1]}, 400, "rank the prompt first"),
        ("/api/check", {"prompt": PROMPT, "output": "a", "sae": "tiny", "latents": [-1]}, 400, "unknown latent -1"),
        (
            "/api/intervene",
            {"prompt": PROMPT, "sae": "tiny", "edit": {"latents": [1], "value": "abc"}},
            422,
            "edit.value",
        ),
        (
            "/api/intervene",
            {"prompt": PROMPT, "sae": "tiny", "edit": {"latents": [1], "kind": "boost"}},
            422,
            "edit.kind",
        ),
        ("/api/intervene", {"prompt": PROMPT, "sae": "tiny", "edit": {"latents": [1]}, "alphas": []}, 422, "alphas"),
        ("/api/intervene", {"prompt": PROMPT, "sae": "tiny", "edit": {"latents": []}}, 422, "edit.latents"),
    ],
)
def test_api_bad_input_is_one_line_and_4xx(server, path, body, status, message):
    code, out = call(server, "POST", path, body)
    assert code == status and message in out["error"], out
    assert "\n" not in out["error"] and "Traceback" not in out["error"]


def test_api_malformed_json_and_unknown_things(server):
    code, out = call(server, "POST", "/api/rank", raw=b"{not json")
    assert code == 422 and "not valid JSON" in out["error"]
    assert call(server, "GET", "/api/card?sae=tiny&latent=x")[0] == 422
    code, out = call(server, "GET", "/api/card?sae=tiny&latent=100000")
    assert code == 400 and "unknown latent 100000" in out["error"]
    assert call(server, "GET", "/api/jobs/999999")[0] == 404
    assert call(server, "GET", "/nope")[0] == 404


def test_api_cancel_a_running_job(server):
    from gradsae.serve.app import create_app  # noqa: F401  (the server fixture's app)

    body = {
        "prompt": PROMPT,
        "sae": "tiny",
        "edit": {"latents": [1], "kind": "add", "value": 1},
        "alphas": [float(a) for a in range(40)],
    }
    code, sub = call(server, "POST", "/api/intervene", body)
    assert code == 200
    code, view = call(server, "POST", f"/api/jobs/{sub['job']}/cancel")
    assert code == 200 and view["state"] in ("running", "cancelled", "done")
    import time

    for _ in range(400):
        _, job = call(server, "GET", f"/api/jobs/{sub['job']}")
        if job["state"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert job["state"] in ("cancelled", "done")  # done only if it finished before the cancel arrived
    assert result(server, "/api/rank", {"prompt": PROMPT, "sae": "tiny"})["state"] == "done"  # the worker lives on


def test_api_sessions_names_and_round_trip(server):
    state = {"prompt": "<script>alert(1)</script>", "results": {"rank": None}}
    assert call(server, "PUT", "/api/sessions/mine-1", state) == (200, {"saved": "mine-1"})
    assert call(server, "GET", "/api/sessions")[1]["sessions"][0] == "mine-1"
    assert call(server, "GET", "/api/sessions/mine-1") == (200, state)
    for bad in ("..%2F..%2Fetc%2Fpasswd", ".hidden", "a%5Cb", "x" * 70):
        code, out = call(server, "GET", f"/api/sessions/{bad}")
        assert code in (400, 404), (bad, out)
        code, out = call(server, "PUT", f"/api/sessions/{bad}", {"a": 1})
        assert code in (400, 404, 405), (bad, out)
    assert call(server, "PUT", "/api/sessions/list", raw=b"[1, 2]")[0] == 422
    assert call(server, "GET", "/api/sessions/never-saved")[0] == 404


def test_api_refuses_other_hosts_and_sends_a_strict_csp(server):
    assert call(server, "GET", "/api/info", headers={"Host": "evil.example"})[0] == 400
    import urllib.request

    with urllib.request.urlopen(server + "/") as r:
        csp = r.headers["Content-Security-Policy"]
        page = r.read().decode()
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp.replace("'self'", "")
    info = json.loads(page.split('<script type="application/json" id="info">')[1].split("</script>")[0])
    assert info["saes"][0]["name"] == "tiny"


def test_serve_refuses_bad_options(tmp_path):
    from gradsae.serve.command import ServeConfig, allowed_hosts, build, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    assert "localhost" in allowed_hosts("127.0.0.1") and allowed_hosts("10.0.0.2") == ("10.0.0.2",)
    (tmp_path / "f").write_text("x")
    for cfg, match in (
        (ServeConfig(sae=["a", "a"]), "same SAE twice"),
        (ServeConfig(sae=["a", "b"], dashboard=["none"]), "1 entries for 2 SAEs"),
        (ServeConfig(sessions=str(tmp_path / "f")), "is a file"),
    ):
        with pytest.raises(GradsaeError, match=match):
            build(cfg)
