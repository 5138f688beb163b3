"""Blind rating: Wilson intervals, sampling and blinding of the page, scoring several raters, bad input, and
(marked ``browser``) clicking answers in headless Chromium changes the stored ratings and the export."""

import json
import re
from dataclasses import asdict

import pytest

from gradsae.dashboard import (
    DEFINITIONS,
    HIST_LO,
    HIST_PER_DECADE,
    SCHEMA,
    DashboardConfig,
    DashboardMeta,
    build_state,
    finalize,
)
from gradsae.errors import GradsaeError
from gradsae.rate import KEY_SCHEMA, RATINGS_SCHEMA, RateConfig, key_path, run, score_ratings, wilson

from conftest import make_tiny, random_sae

EVIL = "<script>alert(1)</script>"


def test_wilson_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (3, 10), (10, 10), (17, 40), (1, 1)]:
        ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def dash_dirs(tmp_path_factory):
    """Two dashboards of two different SAEs on a tiny model, written as dashboard.json folders."""
    tmp = tmp_path_factory.mktemp("rate")
    model, tok = make_tiny("llama")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(f"Row {i}: {EVIL} fox {i % 5} and dog {i}." for i in range(40)))
    cfg = DashboardConfig(
        sae="tiny",
        data=[str(corpus)],
        max_tokens=48 * 10,
        influence_tokens=0,
        context_length=48,
        batch_size=5,
        n_top=5,
        left=6,
        right=2,
        progress=False,
    )
    dirs = []
    for name, seed in (("saeA", 0), ("saeB", 1)):
        sae = random_sae(d_sae=32, arch="topk", k=6, layer=1, bias=0.3, seed=seed)
        st = build_state(cfg, model, tok, sae, 1)
        meta = DashboardMeta(
            schema=SCHEMA,
            model="tiny",
            sae=name,
            hook="blocks.1.hook_resid_post",
            d_sae=32,
            data=cfg.data,
            n_tokens=0,
            n_influence_tokens=0,
            left=6,
            right=2,
            hist_lo_log10=HIST_LO,
            hist_per_decade=HIST_PER_DECADE,
            seconds=0.0,
            config=asdict(cfg),
            definitions=DEFINITIONS,
        )
        d = tmp / name
        d.mkdir()
        (d / "dashboard.json").write_text(json.dumps(finalize(st, model, tok, sae, meta).to_json()))
        dirs.append(str(d))
    return dirs


def _build(dash_dirs, tmp_path, seed=3, n=5):
    out = tmp_path / "rate.html"
    run(RateConfig(sae=dash_dirs, n_per_sae=n, seed=seed, out=str(out)))
    return out, json.loads(key_path(out).read_text())


def test_page_is_blind_seeded_and_mixed(dash_dirs, tmp_path):
    out, key = _build(dash_dirs, tmp_path)
    page = out.read_text()
    assert key["schema"] == KEY_SCHEMA and len(key["items"]) == 10
    saes = [v["sae"] for v in key["items"].values()]
    assert sorted(saes) == sorted(dash_dirs * 5) and saes != sorted(saes)  # both SAEs, interleaved
    for s in dash_dirs + ["saeA", "saeB"]:
        assert s not in page  # the SAE is hidden
    assert EVIL not in page and page.count('class="rt-item"') == 10
    assert "unsafe-inline" not in page and "https://" not in page
    # same seed -> same page and key; another seed -> another sample or order
    out2, key2 = _build(dash_dirs, tmp_path / "again" if (tmp_path / "again").mkdir() is None else None)
    assert key2 == key and out2.read_text() == page
    (tmp_path / "other").mkdir()
    _, key3 = _build(dash_dirs, tmp_path / "other", seed=4)
    assert key3["items"] != key["items"]


def test_score_combines_raters_and_unblinds(dash_dirs, tmp_path, capsys):
    out, key = _build(dash_dirs, tmp_path)
    items = list(key["items"])
    by_sae = {s: [i for i in items if key["items"][i]["sae"] == s] for s in dash_dirs}
    a, b = dash_dirs
    r1 = {
        "schema": RATINGS_SCHEMA,
        "page": key["page"],
        "rater": "ann",
        "ratings": {
            **{i: {"answer": "yes", "note": ""} for i in by_sae[a]},
            **{i: {"answer": "no", "note": "x"} for i in by_sae[b]},
        },
    }
    r2 = {
        "schema": RATINGS_SCHEMA,
        "page": key["page"],
        "rater": "bob",
        "ratings": {by_sae[a][0]: {"answer": "maybe", "note": ""}, by_sae[b][0]: {"answer": None, "note": "skip"}},
    }
    f1, f2 = tmp_path / "r1.json", tmp_path / "r2.json"
    f1.write_text(json.dumps(r1))
    f2.write_text(json.dumps(r2))
    rates = {r.sae: r for r in score_ratings(key, [r1, r2])}
    assert rates[a].counts == {"yes": 5, "maybe": 1, "no": 0} and rates[a].n_raters == 2
    assert rates[b].counts == {"yes": 0, "maybe": 0, "no": 5} and rates[b].n_raters == 1
    assert rates[a].ci["yes"] == wilson(5, 6)
    plot = tmp_path / "rates.png"
    run(RateConfig(score=[str(f1), str(f2)], key=str(key_path(out)), plot=str(plot)))
    text = capsys.readouterr().out
    assert re.search(r"83\.3% \[\s*43\.6,", text) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a ratings file of another page is refused with one clear line
    r1["page"] = "other"
    f1.write_text(json.dumps(r1))
    with pytest.raises(GradsaeError, match="key is for page"):
        run(RateConfig(score=[str(f1)], key=str(key_path(out))))


def test_bad_input(dash_dirs, tmp_path):
    with pytest.raises(GradsaeError, match="at least two SAEs"):
        run(RateConfig(sae=dash_dirs[:1], out=str(tmp_path / "p.html")))
    with pytest.raises(GradsaeError, match="only .* latents"):
        run(RateConfig(sae=dash_dirs, n_per_sae=1000, out=str(tmp_path / "p.html")))
    with pytest.raises(GradsaeError, match="no dashboard"):
        run(RateConfig(sae=[dash_dirs[0], str(tmp_path / "nothing")], out=str(tmp_path / "p.html")))
    with pytest.raises(GradsaeError, match="needs --key"):
        run(RateConfig(score=["x.json"]))


@pytest.mark.browser
def test_clicking_answers_stores_and_exports_them(dash_dirs, tmp_path):
    from chromium import browser, open_page

    out, key = _build(dash_dirs, tmp_path)
    storage = f"gradsae-rate:{key['page']}"
    stored = f"localStorage.getItem({json.dumps(storage)})"
    with browser() as page:
        open_page(page, out)
        assert page.get_attribute("body", "data-ready") == "1"
        assert page.evaluate(stored) is None
        page.check('input[name="item-001"][value="yes"]')
        page.check('input[name="item-002"][value="no"]')
        page.check('input[name="item-001"][value="maybe"]')
        page.fill('input.rt-note[data-item="item-002"]', f"{EVIL} plural nouns")
        page.fill("#rater", "ann")
        assert page.text_content("#progress") == "2"
        assert json.loads(page.evaluate(stored))["ratings"]["item-001"]["answer"] == "maybe"
        page.click("#export")
        ex = json.loads(page.input_value("#export-out"))
        page.reload()  # the answers come back from localStorage
        page.wait_for_selector("body[data-ready]", state="attached")
        assert page.is_checked('input[name="item-001"][value="maybe"]')
        assert page.is_checked('input[name="item-002"][value="no"]')
        assert page.locator('input[name="item-003"]:checked').count() == 0
        assert page.input_value('input.rt-note[data-item="item-002"]') == f"{EVIL} plural nouns"
        assert not page.problems, page.problems
    assert ex["schema"] == RATINGS_SCHEMA and ex["page"] == key["page"] and ex["rater"] == "ann"
    assert ex["ratings"] == {
        "item-001": {"answer": "maybe", "note": ""},
        "item-002": {"answer": "no", "note": f"{EVIL} plural nouns"},
    }
    # the exported file scores
    f = tmp_path / "ratings.json"
    f.write_text(json.dumps(ex))
    rates = {r.sae: r for r in run(RateConfig(score=[str(f)], key=str(key_path(out)), plot=str(tmp_path / "p.png")))}
    assert sum(r.n for r in rates.values()) == 2


def _ratings(key, answers, rater="ann"):
    items = list(key["items"])
    return {
        "schema": RATINGS_SCHEMA,
        "page": key["page"],
        "rater": rater,
        "ratings": {i: {"answer": a, "note": ""} for i, a in zip(items, answers)},
    }


def test_answers_as_the_page_spells_them_count_and_unknown_ones_are_refused(dash_dirs, tmp_path):
    out, key = _build(dash_dirs, tmp_path)
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_ratings(key, ["Yes", "No", "Maybe", " yes ", None])))
    rates = run(RateConfig(score=[str(f)], key=str(key_path(out)), plot=str(tmp_path / "p.png")))
    assert sum(r.n for r in rates) == 4
    for bad in ("definitely", 1, ["yes"]):
        f.write_text(json.dumps(_ratings(key, [bad])))
        with pytest.raises(GradsaeError, match="use Yes, Maybe or No"):
            run(RateConfig(score=[str(f)], key=str(key_path(out))))


def test_a_rater_counts_once(dash_dirs, tmp_path):
    out, key = _build(dash_dirs, tmp_path)
    f1, f2, f3 = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    f1.write_text(json.dumps(_ratings(key, ["yes"], rater="")))  # unnamed: the file's name
    f2.write_text(json.dumps(_ratings(key, ["no"], rater="")))
    f3.write_text(json.dumps(_ratings(key, ["no"], rater="a")))
    rates = run(RateConfig(score=[str(f1), str(f2)], key=str(key_path(out)), plot=str(tmp_path / "p.png")))
    assert max(r.n_raters for r in rates) <= 2 and sum(r.n for r in rates) == 2
    with pytest.raises(GradsaeError, match="given twice"):
        run(RateConfig(score=[str(f1), str(f1)], key=str(key_path(out))))
    with pytest.raises(GradsaeError, match="both by rater 'a'"):
        run(RateConfig(score=[str(f1), str(f3)], key=str(key_path(out))))


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda k, r: (["not", "a", "key"], r), "not a rating key"),
        (lambda k, r: ({**k, "items": "x"}, r), "lacks its page"),
        (lambda k, r: ({**k, "items": {i: "saeA" for i in k["items"]}}, r), "the key is damaged"),
        (lambda k, r: (k, {**r, "ratings": {i: "yes" for i in r["ratings"]}}), 'not {"answer"'),
        (lambda k, r: (k, [r]), "not an exported ratings file"),
        (lambda k, r: (k, {**r, "rater": 7}), "not a name"),
    ],
)
def test_files_of_the_wrong_shape_are_one_line(dash_dirs, tmp_path, mutate, message):
    out, key = _build(dash_dirs, tmp_path)
    k, r = mutate(key, _ratings(key, ["yes", "no"]))
    kf, rf = tmp_path / "k.json", tmp_path / "r.json"
    kf.write_text(json.dumps(k))
    rf.write_text(json.dumps(r))
    with pytest.raises(GradsaeError, match=re.escape(message) if "{" in message else message):
        run(RateConfig(score=[str(rf)], key=str(kf)))


def test_deeply_nested_json_is_one_line(dash_dirs, tmp_path):
    out, key = _build(dash_dirs, tmp_path)
    f = tmp_path / "deep.json"
    f.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(GradsaeError, match="not a JSON"):
        run(RateConfig(score=[str(f)], key=str(key_path(out))))
    with pytest.raises(GradsaeError, match="not a JSON"):
        run(RateConfig(score=[str(tmp_path / "r.json")], key=str(f)))


def test_a_second_page_never_replaces_the_key_of_another(dash_dirs, tmp_path):
    out, key = _build(dash_dirs, tmp_path)
    _build(dash_dirs, tmp_path)  # the same page again: fine
    with pytest.raises(GradsaeError, match="key of another page"):
        run(RateConfig(sae=dash_dirs, n_per_sae=5, seed=9, out=str(out)))
    assert json.loads(key_path(out).read_text()) == key
    foreign = tmp_path / "mine.html"
    foreign.write_text("<html>my own page</html>")
    with pytest.raises(GradsaeError, match="not a gradsae rating page"):
        run(RateConfig(sae=dash_dirs, n_per_sae=5, out=str(foreign)))
    assert foreign.read_text() == "<html>my own page</html>"
    with pytest.raises(GradsaeError, match="names a folder"):
        run(RateConfig(sae=dash_dirs, n_per_sae=5, out=str(tmp_path)))


def test_one_sae_named_twice_is_refused(dash_dirs, tmp_path):
    a = dash_dirs[0]
    with pytest.raises(GradsaeError, match="twice"):
        run(RateConfig(sae=[f"{a}/dashboard.json", a], out=str(tmp_path / "p.html")))
