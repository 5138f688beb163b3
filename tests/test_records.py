"""Typed SQuAD records: the one examples.jsonl reader (rank shards, success beats error), JSON round trips,
and results folders written by earlier versions still read (or refused with their version named)."""

import json
import shutil
from pathlib import Path

import pytest

from gradsae.saes import DEFAULT_SAE
from gradsae import GradsaeError
from gradsae.squad.records import (
    AnswerRecord,
    Cell,
    CellKey,
    EditRecord,
    LatentSet,
    RankedLatent,
    RecordLog,
    merge_shards,
    read_records,
    record_from_json,
)

OLD = Path(__file__).parent / "data" / "results_v1"


def _answer(qid, **kw):
    return AnswerRecord(
        id=qid,
        context_id="c",
        question=f"{qid}?",
        golds=["x"],
        prediction="x",
        raw=" x",
        em=1.0,
        f1=1.0,
        kept=True,
        **kw,
    )


def _lines(path, recs):
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in recs))


def test_reader_merges_shards_and_a_success_beats_an_error(tmp_path):
    err = AnswerRecord(id="a", context_id="c", error="RuntimeError: boom", traceback="...")
    _lines(tmp_path / "examples.jsonl", [_answer("a", seconds=1.0), _answer("b"), err])
    _lines(
        tmp_path / "examples.rank1.jsonl",
        [
            AnswerRecord(id="b", context_id="c", error="E: later error"),
            _answer("c"),
            EditRecord(task="perturb", id="c", error="E: x"),
        ],
    )
    _lines(tmp_path / "examples.rank0.jsonl", [EditRecord(task="perturb", id="c", rows=1, cells={})])
    recs = read_records(tmp_path)
    assert set(recs) == {("answer", "a"), ("answer", "b"), ("answer", "c"), ("perturb", "c")}
    assert recs[("answer", "a")].ok and recs[("answer", "a")].seconds == 1.0  # an error after a success loses
    assert recs[("answer", "b")].ok  # the shard's later error does not replace main's success
    assert recs[("answer", "c")].ok  # only in a shard: still read
    assert recs[("perturb", "c")].ok  # rank0's success beats rank1's error, whatever the file order
    # among successes (or among errors) the later line wins
    _lines(tmp_path / "examples.jsonl", [_answer("a", seconds=1.0), _answer("a", seconds=2.0)])
    assert read_records(tmp_path)[("answer", "a")].seconds == 2.0
    e1 = AnswerRecord(id="z", context_id="c", error="first")
    e2 = AnswerRecord(id="z", context_id="c", error="second")
    _lines(tmp_path / "examples.jsonl", [e1, e2])
    assert read_records(tmp_path)[("answer", "z")].error == "second"


def test_merge_shards_appends_what_main_lacks_and_removes_the_shards(tmp_path):
    RecordLog(tmp_path / "examples.jsonl").append(AnswerRecord(id="a", context_id="c", error="E: x"))
    _lines(tmp_path / "examples.rank0.jsonl", [_answer("a")])
    _lines(tmp_path / "examples.rank1.jsonl", [_answer("b")])
    before = read_records(tmp_path)
    merge_shards(tmp_path)
    assert not list(tmp_path.glob("examples.rank*.jsonl"))
    after = read_records(tmp_path)
    assert {k: r.to_json() for k, r in after.items()} == {k: r.to_json() for k, r in before.items()}
    assert after[("answer", "a")].ok


def test_typed_records_round_trip():
    sets = LatentSet(
        {
            "gradsae": {"top": [RankedLatent(3, 0.5, 1.25)], "bottom": [RankedLatent(7, 0.01, 0.2)]},
            "baseline": {"top": [RankedLatent(3, 1.25, 1.25)], "bottom": []},
        }
    )
    a = _answer(
        "q1", n_active_last=4, n_active_any=9, sets=sets, unspliced=Cell(prediction="y", em=0.0, f1=0.5), seconds=0.25
    )
    p = EditRecord(
        task="perturb",
        id="q1",
        rows=2,
        seconds=1.5,
        cells={CellKey("gradsae", "top", "50%"): Cell(prediction="z", em=0.0, f1=0.0, k=2)},
        control=Cell(prediction="x", em=1.0, f1=1.0, agree=True),
    )
    s = EditRecord(
        task="steer",
        id="q1",
        partner="q2",
        rows=3,
        cells={CellKey("baseline", "bottom", "1"): Cell(prediction="w", em=0.0, f1=0.25, own_f1=1.0, k=1, overlap=0.5)},
        control=Cell(prediction="x", em=0.0, f1=0.0),
    )
    none = EditRecord(task="steer", id="q3", partner=None, cells={}, seconds=0.0)
    err = EditRecord(task="perturb", id="q4", error="RuntimeError: boom", traceback="tb")
    for r in (a, p, s, none, err, AnswerRecord(id="q5", context_id="c", error="E", traceback="tb")):
        d = json.loads(json.dumps(r.to_json()))
        back = record_from_json(d)
        assert back == r and back.to_json() == d
    d = p.to_json()
    assert d["cells"] == {"gradsae/top/50%": {"prediction": "z", "em": 0.0, "f1": 0.0, "k": 2}}
    assert d["control"]["agree"] is True and "unsteered" not in d
    assert s.to_json()["unsteered"] == {"prediction": "x", "em": 0.0, "f1": 0.0} and none.to_json()["partner"] is None
    assert a.to_json()["sets"]["gradsae"]["top"] == [[3, 0.5, 1.25]]
    assert sets.ids("gradsae", "top", "50%", 4) == [3]  # K = 50% of 4 = 2, one stored
    assert CellKey.parse("gradsae/top/10") == CellKey("gradsae", "top", "10") and str(CellKey("a", "b", "c")) == "a/b/c"
    with pytest.raises(ValueError):
        CellKey.parse("gradsae/top")


def test_every_line_of_an_old_folder_reads_and_writes_back_unchanged():
    lines = [json.loads(ln) for ln in (OLD / "examples.jsonl").read_text().splitlines()]
    assert {d["task"] for d in lines} == {"answer", "perturb", "steer"}
    for d in lines:
        assert record_from_json(d).to_json() == d
    recs = read_records(OLD)
    assert len([k for k in recs if k[0] == "answer"]) == 6 and all(r.ok for r in recs.values())
    assert all(r.unspliced is None for (t, _), r in recs.items() if t == "answer")  # written before it existed


def test_a_malformed_record_is_one_line(tmp_path):
    (tmp_path / "examples.jsonl").write_text('{"task": "answer", "id": "a", "sets": {"gradsae": {"top": [[1]]}}}\n')
    with pytest.raises(GradsaeError, match="record 1 .* is malformed"):
        read_records(tmp_path)


def test_report_reads_a_results_folder_written_by_the_previous_layout(tmp_path, capsys):
    from gradsae.cli import main

    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    old = json.loads((OLD / "summary.json").read_text())
    assert 'id="table1"' in page and 'id="questions"' in page and "6 questions, 6 kept" in page
    assert old["sae"] in page and "Local Steering" in page
    # the old summary's verdicts have no "verdict" field: shown from "holds", as before
    assert '<span class="verdict no">does not hold</span>' in page
    # a summary from a future schema is refused with the versions named
    summary = dict(old, schema="gradsae.experiments.summary/9")
    (folder / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "summary/9" in err[0] and "summary/1" in err[0]


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",
        '{"schema": "gradsae.experiments.summary/1", "data": 5}',
        "{not json",
        '{"schema": "gradsae.experiments.summary/1", "rq": []}',
    ],
)
def test_report_on_a_malformed_summary_is_one_line(tmp_path, capsys, content):
    from gradsae.cli import main

    (tmp_path / "summary.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "summary.json" in err[0]
    assert not (tmp_path / "report.html").exists()


def test_report_shows_dashboard_cards_for_the_latents_it_names(tmp_path):
    from gradsae.dashboard import find_dashboard
    from gradsae.viz.report import report_from_folder

    if find_dashboard(DEFAULT_SAE) is None:
        pytest.skip("the bundled SAE has no dashboard")
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    cfg = json.loads((folder / "config.json").read_text())
    page = report_from_folder(folder).read_text()
    assert 'id="cards"' not in page  # the run's SAE folder has no dashboard beside it: no cards
    cfg["sae"] = DEFAULT_SAE
    (folder / "config.json").write_text(json.dumps(cfg))
    page = report_from_folder(folder).read_text()
    recs = read_records(folder)
    top = [r.sets.rankings["gradsae"]["top"][0].latent for (t, _), r in recs.items() if t == "answer" and r.kept]
    assert 'id="cards"' in page and top and all(f'data-latent="{c}"' in page for c in top)
    # folders of the current layout nest the command's config under "config"
    (folder / "config.json").write_text(json.dumps({"commands": ["perturb"], "config": cfg}))
    assert all(f'data-latent="{c}"' in report_from_folder(folder).read_text() for c in top)
