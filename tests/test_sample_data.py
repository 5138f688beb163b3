"""The bundled sample data (written for this project): valid SQuAD 1.1, enough contexts and questions,
answer spans that match their offsets, and few-shot exemplars that never reuse an evaluation context."""

import json
from importlib import resources

import pytest

DATA = resources.files("gradsae") / "bundled" / "data"


def _load(name):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def _paragraphs(obj):
    assert obj["version"] == "1.1" and isinstance(obj["data"], list)
    for art in obj["data"]:
        assert art["title"]
        for par in art["paragraphs"]:
            yield par


@pytest.mark.parametrize("name", ["sample_qa.json", "fewshot.json"])
def test_answer_spans_match_their_offsets(name):
    n = 0
    for par in _paragraphs(_load(name)):
        ctx = par["context"]
        for qa in par["qas"]:
            assert qa["question"].strip().endswith("?"), qa["id"]
            assert qa["answers"], qa["id"]
            for a in qa["answers"]:
                start = a["answer_start"]
                assert a["text"].strip() == a["text"] and a["text"], qa["id"]
                assert ctx[start : start + len(a["text"])] == a["text"], (qa["id"], a)
                n += 1
    assert n > 0


def test_sample_has_enough_contexts_and_questions():
    pars = list(_paragraphs(_load("sample_qa.json")))
    assert len(pars) >= 12
    for par in pars:
        assert len(par["qas"]) >= 4, par["context"][:40]
        assert 80 <= len(par["context"].split()) <= 150, par["context"][:40]
    contexts = [p["context"] for p in pars]
    assert len(set(contexts)) == len(contexts)


def test_ids_unique_across_both_files():
    ids = [
        qa["id"] for name in ("sample_qa.json", "fewshot.json") for par in _paragraphs(_load(name)) for qa in par["qas"]
    ]
    assert len(ids) == len(set(ids))


def test_fewshot_is_one_other_context_with_five_pairs():
    fs = list(_paragraphs(_load("fewshot.json")))
    assert len(fs) == 1 and len(fs[0]["qas"]) >= 5
    eval_contexts = {p["context"] for p in _paragraphs(_load("sample_qa.json"))}
    assert fs[0]["context"] not in eval_contexts
    # not even a shared sentence
    eval_sentences = {s.strip() for c in eval_contexts for s in c.split(". ")}
    assert not {s.strip() for s in fs[0]["context"].split(". ")} & eval_sentences


def test_loads_through_the_experiment_loader():
    squad = pytest.importorskip("gradsae.squad.data")
    qas = squad.load_questions(str(DATA / "sample_qa.json"))
    assert len(qas) >= 48 and len({q.context_id for q in qas}) >= 12
    ctx, pairs = squad.fewshot_exemplars(str(DATA / "fewshot.json"), exclude_contexts={q.context for q in qas})
    assert len(pairs) == 5 and all(a for _, a in pairs)
