"""Bad input to the SQuAD, influence, explain and report commands ends in one line (exit status 2) with nothing
written; verdicts follow from the statistics; the unspliced model's score is shown; defaults work anywhere."""

import base64
import dataclasses
import errno
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradsae import GradsaeError
from gradsae.cli import main
from gradsae.io import output_lock
from gradsae.squad import data as sq
from gradsae.squad.config import ExperimentConfig, PerturbConfig, SteerConfig, StatsConfig
from gradsae.squad.records import Cell, CellKey, EditRecord
from gradsae.squad.summary import MIN_N, decide, paired, splice_warnings, summarize

from conftest import make_tiny, random_sae

OLD = Path(__file__).parent / "data" / "results_v1"


def _one_line_error(capsys, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    for p in parts:
        assert p in err[0], (p, err[0])
    return err[0]


# ---- command-line values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ks", "0"], "K='0'"),
        (["--ks=-50%"], "K='-50%'"),
        (["--ks", "0%"], "K='0%'"),
        (["--ks", "150%"], "K='150%'"),
        (["--ks", ""], "--ks is empty"),
        (["--ks", "nan%"], "K='nan%'"),
        (["--ks", "inf%"], "K='inf%'"),
        (["--min-f1", "5"], "--min-f1 5"),
        (["--max-new-tokens", "-2"], "--max-new-tokens -2"),
        (["--limit", "-3"], "--limit -3"),
        (["--batch-size", "-4"], "--batch-size -4"),
        (["--batch-size", "-2"], "--batch-size -2"),
        (["--out", ""], "--out is empty"),
        (["--methods", "random"], "'random'"),
        (["--ig-steps", "0"], "--ig-steps 0"),
    ],
)
def test_bad_experiment_values_are_one_line(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    assert main(["perturb", *args]) == 2
    _one_line_error(capsys, says)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a results folder


@pytest.mark.parametrize(
    "args, says",
    [(["--clamp", "1,nan"], "--clamp"), (["--steer-ks", "0"], "K='0'"), (["--at", "first"], "invalid choice")],
)
def test_bad_steering_values(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) if "choice" in says else _nothing():
        assert main(["steer", *args]) == 2
    assert says in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize(
    "args, says",
    [
        (["--batch-size", "-1"], "--batch-size -1"),
        (["--ig-steps", "0"], "--ig-steps 0"),
        (["--out", "FOLDER"], "names a folder"),
        (["--out", "new/"], "names a folder"),
    ],
)
def test_bad_influence_values(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FOLDER").mkdir()
    assert main(["influence", "--prompt", "hi", *args]) == 2
    _one_line_error(capsys, says)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FOLDER"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["hi", "--output", "   "], "is blank"),
        (["   "], "empty prompt"),
        (["hi", "--html", "   "], "--html"),
        (["hi", "--mask-k", "0"], "K='0'"),
        (["hi", "--top", "0"], "--top 0"),
    ],
)
def test_bad_explain_values(tmp_path, monkeypatch, capsys, args, says):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", *args]) == 2
    _one_line_error(capsys, says)


def test_device_defaults_to_auto_and_data_defaults_are_bundled():
    from gradsae.demo import DemoConfig
    from gradsae.explain import ExplainConfig
    from gradsae.influence.command import InfluenceConfig

    for cfg in (
        PerturbConfig(),
        SteerConfig(),
        StatsConfig(),
        ExperimentConfig(),
        InfluenceConfig(),
        ExplainConfig(prompt="x"),
        DemoConfig(),
    ):
        assert cfg.device == "auto", type(cfg).__name__
        for f in dataclasses.fields(cfg):
            assert "../shared" not in str(getattr(cfg, f.name)), (type(cfg).__name__, f.name)
    pkg = Path(sq.__file__).resolve().parents[1]
    for path in (PerturbConfig().data, PerturbConfig().fewshot_data):
        assert Path(path).is_file() and pkg in Path(path).resolve().parents


# ---- data files --------------------------------------------------------------------------------


def _squad(tmp_path, qa, context="Paris is in France."):
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}]}))
    return str(p)


def test_answers_as_a_string_is_one_gold_answer(tmp_path):
    qs = sq.load_questions(_squad(tmp_path, {"id": "a", "question": "Where?", "answers": "France"}))
    assert qs[0].answers == ["France"]
    p = tmp_path / "d.jsonl"
    p.write_text('{"id": "b", "context": "C", "question": "Q?", "answers": "France"}\n')
    assert sq.load_questions(str(p))[0].answers == ["France"]


@pytest.mark.parametrize(
    "qa, context, says",
    [
        ({"id": "a", "answers": ["x"]}, "C", 'missing field "question"'),
        ({"id": "a", "question": 5, "answers": ["x"]}, "C", 'field "question" is a int'),
        ({"id": "a", "question": "Q?", "answers": ["x"]}, ["C"], 'field "context" is a list'),
        ({"id": "a", "question": "Q?", "answers": [{"text": 3}]}, "C", "an answer is a int"),
        ({"id": "a", "question": "Q?", "answers": 7}, "C", '"answers" is a int'),
    ],
)
def test_squad_json_with_missing_fields_or_wrong_types(tmp_path, qa, context, says):
    with pytest.raises(GradsaeError, match=re.escape(says)):
        sq.load_questions(_squad(tmp_path, qa, context))


@pytest.mark.parametrize(
    "line, says",
    [
        ('{"context": 1, "question": "Q", "answers": ["a"]}', '"context" is a int'),
        ('{"context": "C", "question": ["Q"], "answers": ["a"]}', '"question" is a list'),
        ('{"context": "C", "question": "Q", "answers": [1]}', "an answer is a int"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_jsonl_with_non_string_fields(tmp_path, line, says):
    p = tmp_path / "d.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(GradsaeError, match=re.escape(says)):
        sq.load_questions(str(p))


def test_non_utf8_data_and_missing_paths(tmp_path, monkeypatch, capsys):
    p = tmp_path / "latin1.json"
    p.write_bytes('{"data": []} café'.encode("latin-1"))
    with pytest.raises(GradsaeError, match="not UTF-8"):
        sq.load_questions(str(p))
    monkeypatch.chdir(tmp_path)
    # a missing file that looks like a hub dataset name is a missing file (no network), with the hf: hint
    with pytest.raises(GradsaeError, match=r"data file rajpurkar/squad not found.*hf:rajpurkar/squad"):
        sq.load_questions("rajpurkar/squad")
    with pytest.raises(GradsaeError, match="is a folder"):
        sq.load_questions(str(tmp_path))
    assert main(["perturb", "--data", str(p), "--model", str(tmp_path / "nope")]) == 2
    capsys.readouterr()


# ---- the command line itself --------------------------------------------------------------------


def test_ctrl_c_while_importing_is_a_clean_exit(monkeypatch, capsys):
    import gradsae.cli as cli

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert main(["report", "x"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err
    # and the CLI module itself loads without torch, so the first second is spent in our code
    out = subprocess.run(
        [sys.executable, "-c", "import sys, gradsae.cli; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize(
    "code, says",
    [(errno.ENOSPC, "free some disk space"), (errno.EROFS, "choose a folder"), (errno.EACCES, "choose a folder")],
)
def test_disk_full_or_read_only_output_is_one_line(tmp_path, monkeypatch, capsys, code, says):
    import gradsae.viz.report as report

    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)

    def fail(path, text):
        raise OSError(code, __import__("os").strerror(code), str(path))

    monkeypatch.setattr(report, "atomic_write_text", fail)
    assert main(["report", str(folder)]) == 2
    _one_line_error(capsys, __import__("os").strerror(code), says)


def test_report_csp_allows_only_its_own_script():
    from gradsae.viz.report import render_report

    page = render_report({})
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    src = re.search(r"script-src ([^;]*)", csp).group(1).strip()
    assert src == f"'sha256-{digest}'" and "unsafe-inline" not in src and "default-src 'none'" in csp


# ---- verdicts and the unspliced model -----------------------------------------------------------


def _pert(i, f1s):
    cells = {CellKey(m, s, "10"): Cell(prediction="p", em=float(v == 1), f1=v, k=10) for (m, s), v in f1s.items()}
    return EditRecord(
        task="perturb", id=str(i), rows=5, cells=cells, control=Cell(prediction="p", em=1, f1=1, agree=True)
    )


def _summary(recs):
    meta = {
        "ks": ["10"],
        "methods": ["baseline", "gradsae"],
        "sets": ["top", "bottom"],
        "model": "m",
        "sae": "s",
        "layer": "l",
        "d_sae": 8,
        "data": "d",
        "min_f1": 0.9,
        "tasks": ["perturb"],
    }
    return summarize({("perturb", r.id): r for r in recs}, [r.id for r in recs], meta)


def test_a_verdict_needs_enough_examples_and_separated_intervals():
    clear = {("baseline", "top"): 0.8, ("baseline", "bottom"): 1.0, ("gradsae", "top"): 0.2, ("gradsae", "bottom"): 1.0}
    few = _summary([_pert(i, clear) for i in range(2)])
    assert few["rq"]["rq1"]["verdict"] == "not enough evidence (n = 2)" and few["rq"]["rq1"]["holds"] is None
    assert few["rq"]["rq2"]["verdict"] == "not enough evidence (n = 2)"
    noisy = {i: dict(clear) for i in range(MIN_N)}
    many = _summary([_pert(i, {**clear, ("gradsae", "top"): 0.2 + 0.05 * (i % 3)}) for i in range(3 * MIN_N)])
    assert many["rq"]["rq1"]["verdict"] == "holds" and many["rq"]["rq2"]["verdict"] == "holds"
    assert many["rq"]["rq1"]["n"] == 3 * MIN_N and "[" in many["rq"]["rq1"]["text"]
    reverse = _summary(
        [
            _pert(i, {**clear, ("gradsae", "top"): 1.0, ("baseline", "top"): 0.1 + 0.01 * (i % 5)})
            for i in range(3 * MIN_N)
        ]
    )
    assert reverse["rq"]["rq2"]["verdict"] == "does not hold" and reverse["rq"]["rq2"]["holds"] is False
    # differences of both signs: the interval spans 0
    mixed = _summary(
        [
            _pert(i, {**clear, ("gradsae", "top"): 0.0 if i % 2 else 1.0, ("baseline", "top"): 0.5})
            for i in range(len(noisy) * 2)
        ]
    )
    assert mixed["rq"]["rq2"]["verdict"] == f"not enough evidence (n = {2 * MIN_N})"
    assert decide([], need_all=True) == (None, "not measured")
    assert paired([], CellKey("a", "b", "1"), CellKey("a", "c", "1"))["n"] == 0


def test_the_table_warns_when_the_splice_keeps_far_fewer_than_the_plain_model():
    from gradsae.squad.tables import table_markdown

    data = {"n_answered": 60, "n_kept": 2, "min_f1": 0.9, "unspliced": {"n_kept": 40, "n": 60}}
    (w,) = splice_warnings(data)
    assert "keeps 2 of 60" in w and "answers 40 correctly" in w
    assert splice_warnings({**data, "n_kept": 30}) == []
    s = _summary([])
    s["data"]["unspliced"] = {"em": 60.0, "f1": 66.0, "n": 60, "n_kept": 40, "em_ci": [0, 0], "f1_ci": [0, 0]}
    s["warnings"] = [w]
    md = table_markdown(s)
    assert "Without the SAE the model answers 40 of 60 correctly" in md and "**Warning:** the SAE splice keeps 2" in md


# ---- runs into a folder (tiny model) ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    model, tok = make_tiny("llama")
    root = tmp_path_factory.mktemp("robust")
    random_sae(d_sae=64, layer=1).save(root / "sae")
    rows = [
        {"id": f"q{i}", "context": "The mill is by the river.", "question": f"Q{i}?", "answers": ["mill"]}
        for i in range(3)
    ]
    (root / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    base = dict(
        sae=str(root / "sae"),
        data=str(root / "d.jsonl"),
        template="plain",
        max_new_tokens=3,
        limit=0,
        progress=False,
        ks=["1"],
        threads=0,
        min_f1=0.0,
    )
    return model, tok, root, base


def test_a_second_writer_is_refused(tiny_run):
    from gradsae.squad.run import run_stats

    model, tok, root, base = tiny_run
    with output_lock(root / "locked"):
        with pytest.raises(GradsaeError, match="another gradsae run is writing"):
            run_stats(StatsConfig(out=str(root / "locked"), **base), model=model, tokenizer=tok)


@pytest.mark.parametrize(
    "name, content", [("config.json", '{"my": "settings"}'), ("summary.json", '{"x": 1}'), ("config.json", "not json")]
)
def test_a_foreign_file_in_out_is_never_overwritten(tiny_run, name, content):
    from gradsae.squad.run import run_stats

    model, tok, root, base = tiny_run
    out = root / f"foreign-{name}-{len(content)}"
    out.mkdir()
    (out / name).write_text(content)
    with pytest.raises(GradsaeError, match=f"{name} was not written by a gradsae experiment"):
        run_stats(StatsConfig(out=str(out), **base), model=model, tokenizer=tok)
    assert (out / name).read_text() == content and not (out / "examples.jsonl").exists()


def test_resume_refuses_a_data_file_whose_content_changed(tiny_run):
    from gradsae.squad.run import run_stats

    model, tok, root, base = tiny_run
    data = root / "changing.jsonl"
    shutil.copy(base["data"], data)
    cfg = StatsConfig(out=str(root / "changing"), **{**base, "data": str(data)})
    s = run_stats(cfg, model=model, tokenizer=tok)
    assert s["data"]["n_answered"] == 3
    un = s["data"]["unspliced"]
    assert un["n"] == 3 and 0 <= un["n_kept"] <= 3  # the model without the SAE, on the same questions
    assert "Without the SAE" in (root / "changing" / "table.md").read_text()
    assert "without the SAE" in (root / "changing" / "report.html").read_text()
    run_stats(cfg, model=model, tokenizer=tok)  # same content: resumes
    data.write_text(data.read_text().replace('"mill"', '"river"'))
    with pytest.raises(GradsaeError, match="the data file's content changed"):
        run_stats(cfg, model=model, tokenizer=tok)


def test_a_prompt_longer_than_the_context_is_refused_with_the_numbers(tiny_run):
    from gradsae.squad.run import run_stats

    model, tok, root, base = tiny_run
    long = root / "long.jsonl"
    long.write_text(json.dumps({"id": "x", "context": "word " * 200, "question": "Q?", "answers": ["w"]}) + "\n")
    with pytest.raises(GradsaeError, match=r"prompt 1 is \d+ tokens, plus 3 new tokens .* context of 512"):
        run_stats(StatsConfig(out=str(root / "long"), **{**base, "data": str(long)}), model=model, tokenizer=tok)
    assert not (root / "long").exists()


def test_explain_view_keeps_emoji_and_right_to_left_text():
    from gradsae.explain import explain
    from gradsae.viz.report import render_example_page

    model, tok = make_tiny("llama")
    prompt = "Ask 😀 and مرحبا:"
    inf, view = explain(model, tok, random_sae(bias=0.2, seed=3), prompt, " ok", top=3, mask_k=())
    assert "\ufffd" not in "".join(view["tokens"]) and "".join(view["tokens"]).startswith(prompt)
    assert len(view["tokens"]) == len(inf.token_ids)
    shown = re.search(r'<div class="tokens"[^>]*>(.*?)</div>', render_example_page(view), re.S).group(1)
    text = re.sub(r"<[^>]+>", "", shown)  # the token view's text, tags removed
    assert "😀" in text and "مرحبا" in text and "\ufffd" not in text


@pytest.mark.browser
def test_the_csp_blocks_any_other_inline_script_in_chromium(tmp_path):
    """The page's own script runs (data-ready), a script injected into the page does not."""
    from gradsae.viz.report import render_report
    from chromium import browser, open_page

    page = render_report({}).replace("<main>", "<main><script>document.body.setAttribute('data-evil', '1')</script>", 1)
    path = tmp_path / "page.html"
    path.write_text(page)
    with browser() as pg:
        open_page(pg, path)
        assert pg.get_attribute("body", "data-ready") == "1"
        assert pg.get_attribute("body", "data-evil") is None
        assert any("Content Security Policy" in p for p in pg.problems), pg.problems  # Chromium refused it


def test_with_the_error_term_kept_the_unspliced_answers_are_the_spliced_ones(tiny_run, monkeypatch):
    from gradsae import load_sae
    from gradsae.squad import phases

    model, tok, root, base = tiny_run
    cfg = StatsConfig(out="unused", **{**base, "error": "keep"})
    ctx = phases.RunContext(cfg, model, tok, load_sae(base["sae"]), None, sq.PromptBuilder("plain", tok))
    calls, real = [], ctx.generate
    monkeypatch.setattr(
        ctx, "generate", lambda prompts, **kw: (calls.append(kw.get("spliced", True)), real(prompts, **kw))[1]
    )
    recs = phases.answer_batch(ctx, sq.load_questions(base["data"]))
    assert calls == [True]  # one generation, through the splice
    assert all(r.unspliced.prediction == r.prediction and r.unspliced.f1 == r.f1 for r in recs)
