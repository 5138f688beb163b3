"""SQuAD data, prompts, answer extraction and the official SQuAD 1.1 metrics on hand-worked cases."""

import json

import pytest

from gradsae import GradsaeError
from gradsae.squad.data import (
    PromptBuilder,
    em_f1,
    evaluate,
    exact_match,
    extract_answer,
    f1,
    fewshot_exemplars,
    is_correct,
    load_questions,
    normalize_answer,
)

from conftest import byte_tokenizer


# ---- metrics ----------------------------------------------------------------------------------


def test_normalisation_articles_punctuation_case_whitespace():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # 'the' only as a whole word
    assert normalize_answer("U.S.A.") == "usa"


def test_exact_match_and_f1_hand_worked():
    assert exact_match("the Eiffel Tower.", "Eiffel tower")
    assert not exact_match("Eiffel", "Eiffel Tower")
    # pred "eiffel" vs gold "eiffel tower": precision 1, recall 1/2 -> F1 = 2/3
    assert f1("Eiffel", "the Eiffel Tower") == pytest.approx(2 / 3)
    # pred "in paris france" vs gold "paris": P = 1/3, R = 1 -> F1 = 0.5
    assert f1("in Paris, France", "Paris") == pytest.approx(0.5)
    # repeated tokens count with multiplicity: pred "a b b" -> "b b", gold "b" : P = 1/2, R = 1 -> 2/3
    assert f1("a b b", "b") == pytest.approx(2 / 3)
    assert f1("", "Paris") == 0.0 and f1("the", "a") == 0.0  # nothing left after normalisation -> 0


def test_max_over_gold_answers_and_x100():
    em, sc = em_f1("Denver", ["Denver Broncos", "Broncos", "denver"])
    assert em == 1.0 and sc == 1.0
    em, sc = em_f1("the Broncos team", ["Denver Broncos", "Carolina Panthers"])
    assert em == 0.0 and sc == pytest.approx(2 * (1 / 2) * (1 / 2) / 1)  # 'broncos team' vs 'denver broncos'
    r = evaluate(["Denver", "Paris"], [["Denver Broncos"], ["paris", "Paris, France"]])
    assert r["exact_match"] == pytest.approx(50.0)
    assert r["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    with pytest.raises(GradsaeError):
        em_f1("x", [])


def test_correct_sample_filter_threshold():
    assert is_correct(0.9) and is_correct(1.0) and not is_correct(0.8999)
    assert is_correct(2 / 3, min_f1=0.6) and not is_correct(2 / 3)


# ---- answer extraction ------------------------------------------------------------------------


def test_extraction_rules():
    assert extract_answer("  Paris\nQuestion: next") == "Paris"
    assert extract_answer("Sure. Result = [[ Denver Broncos ]]\n", "bracket") == "Denver Broncos"
    assert extract_answer("Result = [Denver]", "bracket") == "Denver"
    assert extract_answer("no brackets here", "bracket") == "no brackets here"
    assert extract_answer("The answer is: 1858.", "regex", r"answer is: (.*)\.") == "1858"
    assert extract_answer("nothing\nelse", "regex", r"answer is: (.*)") == "nothing"
    with pytest.raises(GradsaeError, match="regex"):
        extract_answer("x", "regex", "(")


# ---- data ---------------------------------------------------------------------------------------


def _squad(tmp_path, version="v2.0"):
    data = {
        "version": version,
        "data": [
            {
                "title": "T1",
                "paragraphs": [
                    {
                        "context": "Alpha context.",
                        "qas": [
                            {"id": "a1", "question": "q a1?", "answers": [{"text": "Alpha", "answer_start": 0}]},
                            {
                                "id": "a2",
                                "question": "q a2?",
                                "answers": [],
                                "is_impossible": True,
                                "plausible_answers": [{"text": "x", "answer_start": 0}],
                            },
                            {
                                "id": "a3",
                                "question": "q a3?",
                                "answers": [
                                    {"text": "context", "answer_start": 6},
                                    {"text": "context", "answer_start": 6},
                                ],
                            },
                        ],
                    },
                    {
                        "context": "Beta context.",
                        "qas": [{"id": "b1", "question": "q b1?", "answers": [{"text": "Beta", "answer_start": 0}]}],
                    },
                ],
            },
            {
                "title": "T2",
                "paragraphs": [
                    {
                        "context": "Gamma.",
                        "qas": [
                            {"id": "c1", "question": "q c1?", "answers": [{"text": "Gamma", "answer_start": 0}]},
                            {"id": "c2", "question": "q c2?", "answers": [{"text": "G", "answer_start": 0}]},
                        ],
                    }
                ],
            },
        ],
    }
    p = tmp_path / "squad.json"
    p.write_text(json.dumps(data))
    return p


def test_squad_json_skips_unanswerable_and_dedups_answers(tmp_path):
    qs = load_questions(str(_squad(tmp_path)))
    assert [q.id for q in qs] == ["a1", "a3", "b1", "c1", "c2"]
    assert qs[1].answers == ["context"]
    assert qs[0].context_id == qs[1].context_id != qs[2].context_id
    assert [q.id for q in load_questions(str(_squad(tmp_path)), limit=2)] == ["a1", "a3"]


def test_shuffle_is_seeded_and_keeps_contexts_together(tmp_path):
    p = str(_squad(tmp_path))
    a = [q.id for q in load_questions(p, shuffle=True, seed=1)]
    assert a == [q.id for q in load_questions(p, shuffle=True, seed=1)]
    assert sorted(a) == sorted(["a1", "a3", "b1", "c1", "c2"])
    for pair in (("a1", "a3"), ("c1", "c2")):  # same-context questions stay adjacent
        assert abs(a.index(pair[0]) - a.index(pair[1])) == 1


def test_jsonl_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        '{"id": "x", "context": "C", "question": "Q?", "answers": ["A"]}\n'
        '{"context": "C", "question": "Q2?", "answers": {"text": ["B"], "answer_start": [0]}}\n'
        '{"context": "D", "question": "Q3?", "answers": []}\n'
    )
    qs = load_questions(str(p))
    assert [q.answers for q in qs] == [["A"], ["B"]] and qs[0].context_id == qs[1].context_id
    with pytest.raises(GradsaeError, match="not found"):
        load_questions(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "C"}\n')
    with pytest.raises(GradsaeError, match="missing field"):
        load_questions(str(bad))


def test_fewshot_never_uses_an_evaluation_context(tmp_path):
    p = _squad(tmp_path, "1.1")
    data = json.loads(p.read_text())
    # give both paragraphs of T1 five questions
    for par in data["data"][0]["paragraphs"]:
        par["qas"] = [
            {"id": f"{par['context'][:2]}{i}", "question": f"q{i}?", "answers": [{"text": "A", "answer_start": 0}]}
            for i in range(5)
        ]
    p.write_text(json.dumps(data))
    ctx, pairs = fewshot_exemplars(str(p))
    assert ctx == "Alpha context." and len(pairs) == 5
    ctx2, _ = fewshot_exemplars(str(p), exclude_contexts=["Alpha context."])
    assert ctx2 == "Beta context."
    with pytest.raises(GradsaeError):
        fewshot_exemplars(str(p), exclude_contexts=["Alpha context.", "Beta context."])


def test_templates():
    tok = byte_tokenizer()
    b = PromptBuilder("fewshot", tok, "Ctx0", [("q1?", "a1"), ("q2?", "a2")])
    s = b("My context", "My question?")
    assert s.startswith("Answer each question") and "Ctx0" in s and "Question: q2?\nAnswer: a2" in s
    assert s.endswith("Context: My context\nQuestion: My question?\nAnswer:") and b.default_stop == (
        "\n",
        "Question",
        "Context",
    )
    o = PromptBuilder("official", tok)
    assert "Result = [[ label ]]" in o("C", "Q") and o.default_extract == "bracket" and o.default_stop == ()
    assert PromptBuilder("Q: {question} C: {context} A:", tok)("c", "q") == "Q: q C: c A:"
    with pytest.raises(GradsaeError, match="template"):
        PromptBuilder("nonsense", tok)
    with pytest.raises(GradsaeError, match="chat template"):
        PromptBuilder("chat", tok)  # the byte tokenizer has none


def test_bundled_dev_file_loads():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]  # the shared SQuAD files beside the checkout, when present
    dev = root / "../shared/data/squad/dev-v2.0-first5.json"
    train = root / "../shared/data/squad/train-v1.1-notre-dame.json"
    if not dev.exists():
        pytest.skip("../shared/data/squad not present")
    qs = load_questions(str(dev), limit=150)
    assert len(qs) == 150 and all(q.answers for q in qs)
    ctx, pairs = fewshot_exemplars(str(train), exclude_contexts=[q.context for q in qs])
    assert len(pairs) == 5 and ctx not in {q.context for q in qs}
