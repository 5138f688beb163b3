"""The HTML report: escaping, layout of Table 1, self-containment, the results-folder path, and (marked
``browser``) a headless-Chromium render with a screenshot."""

import json
import os
import re
import shutil

import pytest

from gradsae.influence import Example, influence, promoted_tokens
from gradsae.viz.report import (
    attach_records,
    json_for_script,
    render_example,
    render_report,
    render_table1,
    report_from_folder,
    write_report,
)

from chromium import browser, open_page
from conftest import make_tiny, random_sae

EVIL = "<script>alert(1)</script>"
EVIL_ESC = "&lt;script&gt;alert(1)&lt;/script&gt;"
KS = ["1", "10", "50%"]


def _cell(em, f1, n=8):
    return {
        "em": em,
        "f1": f1,
        "em_ci": [max(0, em - 20), min(100, em + 10)],
        "f1_ci": [max(0, f1 - 15), min(100, f1 + 8)],
        "n": n,
        "k_mean": 3.0,
    }


def fake_summary():
    """A summary.json with the schema of docs/experiments.md; GradSAE TopK hurts more than the Baseline's."""
    pert = {
        "baseline": {
            "top": {k: _cell(90.0 - i, 92.0 - i) for i, k in enumerate(KS)},
            "bottom": {k: _cell(100.0, 100.0) for k in KS},
        },
        "gradsae": {
            "top": {k: _cell(60.0 - 10 * i, 70.0 - 10 * i) for i, k in enumerate(KS)},
            "bottom": {k: _cell(97.5, 99.0) for k in KS},
        },
    }
    steer = {
        m: {
            s: {
                k: dict(
                    _cell(
                        12.5 if (m, s) == ("gradsae", "top") else 0.0, 15.0 if (m, s) == ("gradsae", "top") else 0.0, 6
                    ),
                    own_f1=40.0,
                    overlap=30.0,
                )
                for k in KS
            }
            for s in ("top", "bottom")
        }
        for m in ("baseline", "gradsae")
    }
    return {
        "schema": "gradsae.experiments.summary/1",
        "tasks": ["perturb", "steer", "stats"],
        "model": "tiny-llama",
        "sae": EVIL,
        "layer": "blocks.1.hook_resid_post",
        "d_sae": 256,
        "ks": KS,
        "methods": ["baseline", "gradsae"],
        "sets": ["top", "bottom"],
        "data": {
            "path": "sample_qa.json",
            "n_examples": 12,
            "n_answered": 12,
            "n_kept": 8,
            "min_f1": 0.9,
            "unedited": {"em": 60.0, "f1": 66.0, "n": 12},
        },
        "failed": {
            "answer": 0,
            "perturb": 1,
            "steer": 0,
            "errors": [{"task": "perturb", "id": "q9", "error": f"RuntimeError: {EVIL}"}],
        },
        "perturbation": {"n": 8, "control": {"em": 100.0, "f1": 100.0, "n": 8, "agree": 8}, "cells": pert},
        "steering": {
            "n": 6,
            "n_without_partner": 2,
            "inject": "activation",
            "at": "all",
            "clamp": None,
            "ks": KS,
            "unsteered": _cell(0.0, 3.0, 6),
            "cells": steer,
        },
        "stats": {
            "n": 8,
            "active_last_mean": 40.5,
            "active_any_mean": 120.0,
            "k50_mean": 20.0,
            "cross_top_overlap": 25.0,
            "cross_bottom_overlap": 1.0,
            "inner": {"baseline": {"top": 90.0, "bottom": 91.0}, "gradsae": {"top": 50.0, "bottom": 0.5}},
            "n_context_pairs": 10,
        },
        "rq": {
            "rq1": {"holds": True, "text": "TopK hurts more than BottomK"},
            "rq2": {"holds": False, "text": EVIL},
            "rq3": {"holds": None, "text": "not run"},
        },
        "timing": {"seconds": 12.0, "answer": 3.0},
    }


@pytest.fixture(scope="module")
def example():
    """A real influence view from a tiny model, with hostile text in every data field the report shows."""
    model, tok = make_tiny("llama")
    sae = random_sae(bias=0.2, seed=3)
    prompt = f"Question: {EVIL} & who?\nAnswer:"
    inf = influence(model, tok, sae, [Example(prompt, " <b>Bob</b>", id="q1<i>")], keep_per_token=4)[0]
    top = [int(c) for c in inf.top(5)] + [int(c) for c in inf.bottom(5)]
    ex = inf.to_json(top=5, promoted=promoted_tokens(model, tok, sae, top, n=4))
    assert ex["per_token"] and len(ex["per_token"]["values"][0]) == len(ex["tokens"])
    ex.update(
        question=EVIL,
        golds=[EVIL, "Bob"],
        perturb={
            "control": {"prediction": EVIL, "f1": 1.0},
            "cells": {
                f"{m}/{s}/{k}": {"prediction": f"{EVIL}{m}{k}", "em": 0.0, "f1": 0.5, "k": 2}
                for m in ("baseline", "gradsae")
                for s in ("top", "bottom")
                for k in KS
            },
        },
        steer={
            "partner": "q2",
            "partner_question": EVIL,
            "partner_golds": ["x"],
            "unsteered": {"em": 0.0, "f1": 0.0},
            "cells": {"gradsae/top/10": {"prediction": EVIL, "f1": 1.0, "own_f1": 0.0, "k": 10}},
        },
    )
    return ex


def test_every_data_string_is_escaped(example):
    page = render_report(
        fake_summary(),
        [example],
        config={"seed": EVIL, "nested": {"x": EVIL}},
        sae_eval={"nmse": 0.1, "note": EVIL},
        answers=[
            {
                "task": "answer",
                "id": EVIL,
                "question": EVIL,
                "golds": [EVIL],
                "prediction": EVIL,
                "f1": 1.0,
                "kept": True,
            }
        ],
    )
    assert EVIL not in page and "<b>Bob</b>" not in page and "q1<i>" not in page
    assert EVIL_ESC in page
    # the only script elements: one JSON data block per example and the page's own script
    assert page.count("<script") == 2
    assert page.count("</script>") == 2
    data = re.search(r'<script type="application/json" class="ex-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and json.loads(data)["labels"]  # still valid JSON after escaping


def test_json_for_script_round_trips():
    obj = {"a": "</script><!-- & \u2028", "b": [1.5, -2]}
    s = json_for_script(obj)
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == obj


def test_self_contained(example):
    page = render_report(fake_summary(), [example])
    # no external resource: every src/href is a data: URI or an in-page anchor
    for m in re.finditer(r'\b(?:src|href)\s*=\s*"([^"]*)"', page):
        assert m.group(1).startswith(("data:", "#")), m.group(1)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert page.count('src="data:image/png;base64,') == 2  # perturbation and steering plots


def test_table1_layout_and_best_marks():
    html = render_table1(fake_summary())
    for k in KS:
        assert f">K={k}<" in html
    assert html.count("<tr>") == 2 + 8  # two header rows, 2 tasks × 2 methods × 2 sets
    assert "Perturbation" in html and "Local Steering" in html
    # perturbation TopK: lower is best -> GradSAE's 60.00 EM at K=1 is bold, the Baseline's 90.00 is not
    assert re.search(r"<strong><span[^>]*>60\.00</span></strong>", html)
    assert not re.search(r"<strong><span[^>]*>90\.00</span></strong>", html)
    # steering TopK: higher is best -> underlined
    assert re.search(r"<u><span[^>]*>12\.50</span></u>", html)
    assert "n = 8" in html and "95% CI" in html


def test_example_section_has_tokens_latents_and_answers(example):
    sec = render_example(example)
    n_tok = len(example["tokens"])
    assert len(re.findall(r'class="t( ans)?"', sec)) == n_tok
    assert sec.count('class="t ans"') == n_tok - example["n_prompt"]
    assert sec.count('button type="button" class="lat') == len(example["per_token"]["latents"])
    for r in example["top"]:
        assert f"<td>{r['latent']}</td>" in sec
    assert "Answer after masking" in sec and "local steering" in sec
    # a latent's value is in the hover title of each token
    c0 = example["per_token"]["latents"][0]
    assert sec.count(f"latent {c0}: g = ") == n_tok


def test_example_without_per_token():
    ex = {
        "id": "x",
        "prompt": "p",
        "output": "o",
        "tokens": ["p", " o"],
        "n_prompt": 1,
        "top": [],
        "bottom": [],
        "per_token": None,
        "meta": {},
    }
    sec = render_example(ex)
    assert "no per-token influence" in sec and len(re.findall(r'class="t( ans)?"', sec)) == 2


def test_report_from_folder(tmp_path, example):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(fake_summary()))
    config = {"commands": ["experiment"], "config": {"seed": 1, "template": "fewshot"}, "fingerprint": {"seed": 1}}
    (folder / "config.json").write_text(json.dumps(config))
    ex = {k: v for k, v in example.items() if k not in ("perturb", "steer", "question", "golds")}
    recs = [
        {
            "task": "answer",
            "id": ex["id"],
            "question": "Who?",
            "golds": ["Bob"],
            "prediction": "Bob",
            "f1": 1.0,
            "kept": True,
        },
        {
            "task": "answer",
            "id": "q2",
            "question": "Partner?",
            "golds": ["Ann"],
            "prediction": "Ann",
            "f1": 1.0,
            "kept": True,
        },
        {
            "task": "perturb",
            "id": ex["id"],
            "control": {"prediction": "Bob"},
            "cells": {"gradsae/top/1": {"prediction": "Carl", "f1": 0.0, "k": 1}},
        },
        {
            "task": "steer",
            "id": ex["id"],
            "partner": "q2",
            "unsteered": {"em": 0, "f1": 0},
            "cells": {"gradsae/top/1": {"prediction": "Ann", "f1": 1.0, "k": 1}},
        },
    ]
    (folder / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"task": "ans')
    path = report_from_folder(folder, [ex])
    page = path.read_text()
    assert path == folder / "report.html"
    assert "Carl" in page and "Partner?" in page and "Who?" in page and "fewshot" in page
    assert not list(folder.glob(".report.html.*"))  # atomic write leaves no temp file
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's private 0600
    merged = attach_records(ex, {("answer", "q9"): recs[0]})
    assert "question" not in merged  # other ids are not attached


def test_sweep_summary_renders_one_section_per_run():
    s = fake_summary()
    sweep = {
        "schema": "gradsae.experiments.sweep/1",
        "runs": [{"tag": "L6", "summary": s}, {"tag": "L9", "summary": s}],
    }
    page = render_report(sweep, [])
    assert 'id="run-L6"' in page and 'id="run-L9"' in page


# ---- a real browser (Playwright + Chromium) -------------------------------------------------------


@pytest.mark.browser
def test_report_renders_in_chromium(tmp_path, example):
    report = write_report(
        tmp_path / "report.html",
        fake_summary(),
        [example, dict(example, id="second")],
        config={"seed": 0},
        sae_eval={"nmse": 0.12},
    )
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'(class="ex-data">)\{', r"\1{oops", report.read_text(), count=1))
    with browser(1280, 2000) as page:
        open_page(page, report)
        # the page's script ran to the end and reported no error
        assert page.get_attribute("body", "data-ready") == "1"
        assert page.get_attribute("body", "data-js-error") is None
        for sid in ("config", "table1", "plots", "stats", "rq", "sae-eval", "examples", "ex-q1_i_", "ex-second"):
            assert page.locator(f'[id="{sid}"]').count() == 1, sid
        # JS coloured the tokens of the first latent and kept data escaped: no element came from the data
        out = page.content()
        assert EVIL not in out and "alert(1)" in out
        assert page.locator('main script:not([type="application/json"]), img:not([src^="data:"])').count() == 0
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not page.problems, page.problems
        # the check can fail: a page whose data block is broken reports the script error in the DOM
        open_page(page, broken)
        assert page.get_attribute("body", "data-js-error") == "1"
        assert page.get_attribute("body", "data-ready") is None

    keep = os.environ.get("GRADSAE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_sae_eval_in_saebench_layout_shows_the_metrics_first():
    from gradsae.viz.report import render_sae_eval

    html = render_sae_eval(
        {
            "eval_result_metrics": {"nmse": 0.123456, "l0": 32.0, "steering": {"assoc": 0.4}},
            "eval_config": {"sae": EVIL},
            "eval_result_details": [{"x": list(range(40))}],
        }
    )
    assert html.index("nmse") < html.index("<details>") < html.index("eval_config.sae")
    assert "0.1235" in html and "steering.assoc" in html and EVIL not in html and "40 items" in html
    assert render_sae_eval(None) == ""
