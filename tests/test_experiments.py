"""The SQuAD experiments on a tiny model: filter, perturbation and steering edits, resume, failures, summary."""

import json
from pathlib import Path

import pytest
import torch

from gradsae.saes import DEFAULT_SAE
from gradsae import GradsaeError
from gradsae.squad import data as sq
from gradsae.squad import phases
from gradsae.squad import run as ex
from gradsae.squad.config import ExperimentConfig, PerturbConfig, SteerConfig, StatsConfig
from gradsae.squad.phases import pick_partner
from gradsae.squad.records import AnswerRecord, Cell
from gradsae.squad.records import read_records
from gradsae.squad.run import run_all, run_perturb, run_stats
from gradsae.squad.summary import SWEEP_SCHEMA, cell, latent_stats, mean_ci, overlap, wilson_ci

from conftest import make_tiny, random_sae

KS = ["1", "50%"]


# ---- pure functions ---------------------------------------------------------------------------


def test_partner_same_context_never_same_question_and_seeded():
    kept = [("a", "c1", "Who?"), ("b", "c1", "When?"), ("c", "c1", "Who?"), ("d", "c2", "Where?"), ("e", "c1", "Why?")]
    for seed in range(20):
        p = pick_partner("a", "c1", kept, "Who?", seed)
        assert p in ("b", "e")  # same context, not itself, not the same question text ("c")
        assert pick_partner("a", "c1", kept, "Who?", seed) == p
        assert pick_partner("a", "c1", list(reversed(kept)), "Who?", seed) == p  # order does not matter
    assert {pick_partner("a", "c1", kept, "Who?", s) for s in range(20)} == {"b", "e"}
    assert pick_partner("d", "c2", kept, "Where?", 0) is None


def test_intervals_and_cells():
    lo, hi = wilson_ci(10, 10)
    assert hi == pytest.approx(100.0) and 65 < lo < 75  # Wilson for 10/10: [72.2, 100]
    assert wilson_ci(0, 0) == (None, None)
    lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0) and hi - 2.0 == pytest.approx(4.303 / 3**0.5, rel=1e-3)
    c = cell([Cell(em=1.0, f1=1.0, k=1), Cell(em=0.0, f1=0.5, k=3)])
    assert c["em"] == 50.0 and c["f1"] == 75.0 and c["n"] == 2 and c["k_mean"] == 2.0
    assert overlap([1, 2, 3, 4], [2, 4, 9]) == 0.5 and overlap([], [1]) is None


def test_latent_stats_on_hand_made_sets():
    def rec(i, ctx, btop, gtop, n_last=4):
        mk = lambda ids: [[c, 1.0, 1.0] for c in ids]  # noqa: E731
        return {
            "id": i,
            "context_id": ctx,
            "n_active_last": n_last,
            "n_active_any": 10,
            "sets": {
                "baseline": {"top": mk(btop), "bottom": mk(btop[::-1])},
                "gradsae": {"top": mk(gtop), "bottom": mk(gtop[::-1])},
            },
        }

    rs = [rec("a", "c", [1, 2, 3], [1, 5, 6]), rec("b", "c", [1, 2, 7], [8, 9, 6])]
    st = latent_stats([AnswerRecord.from_json({"task": "answer", **r}) for r in rs])  # K = 50% of 4 = 2
    assert st["k50_mean"] == 2 and st["active_last_mean"] == 4
    # cross top: a {1,2} vs {1,5} = 1/2; b {1,2} vs {8,9} = 0 -> 25%
    assert st["cross_top_overlap"] == pytest.approx(25.0)
    # inner baseline top: {1,2} vs {1,2} = 100%; gradsae top {1,5} vs {8,9} = 0%
    assert st["inner"]["baseline"]["top"] == pytest.approx(100.0) and st["inner"]["gradsae"]["top"] == 0.0
    assert st["n_context_pairs"] == 2


# ---- tiny-model fixtures ------------------------------------------------------------------------

CONTEXTS = ["The river Olm runs past the mill.", "Nora keeps bees near the old barn.", "A red kite nests on the tower."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model, a random SAE on disk, and a JSONL whose gold answers are the model's own answers for
    most questions (so the correct-sample filter keeps them) and nonsense for two."""
    torch.manual_seed(0)
    model, tok = make_tiny("llama")
    root = tmp_path_factory.mktemp("exp")
    sae = random_sae(d_sae=128, layer=1)
    sae.save(root / "sae")
    rows = [
        {"id": f"c{c}q{q}", "context": ctx, "question": f"Question {q} about it?", "answers": ["placeholder"]}
        for c, ctx in enumerate(CONTEXTS)
        for q in range(3)
    ]
    probe = root / "probe.jsonl"
    probe.write_text("\n".join(json.dumps(r) for r in rows))
    base = dict(
        sae=str(root / "sae"),
        template="plain",
        max_new_tokens=5,
        limit=0,
        progress=False,
        batch_size=3,
        ks=KS,
        threads=0,
    )
    run_stats(StatsConfig(data=str(probe), min_f1=0.0, out=str(root / "probe"), **base), model=model, tokenizer=tok)
    preds = {r["id"]: r["prediction"] for r in _records(root / "probe").values() if r["task"] == "answer"}
    wrong = {"c0q1", "c2q2"}
    for r in rows:
        r["answers"] = ["qqqq zzzz"] if r["id"] in wrong else [preds[r["id"]]]
    data = root / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    usable = {i for i, p in preds.items() if i not in wrong and p.strip() and sq.normalize_answer(p)}
    return dict(model=model, tok=tok, sae=sae, root=root, data=str(data), base={**base, "data": str(data)}, kept=usable)


def _records(folder):
    """examples.jsonl as {(task, id): JSON object}, through the one reader."""
    return {k: r.to_json() for k, r in read_records(folder).items()}


def _cfg(cls, setup, out, **kw):
    return cls(out=str(setup["root"] / out), **{**setup["base"], **kw})


def _strip(s):
    s = dict(s)
    s.pop("timing", None)
    return s


def test_correct_sample_filter_counts_kept(setup):
    s = run_stats(_cfg(StatsConfig, setup, "filter"), model=setup["model"], tokenizer=setup["tok"])
    assert s["data"]["n_examples"] == 9 and s["data"]["n_answered"] == 9
    assert s["data"]["n_kept"] == len(setup["kept"]) >= 4
    recs = _records(setup["root"] / "filter")
    kept = {i for (t, i), r in recs.items() if t == "answer" and r["kept"]}
    assert kept == setup["kept"]
    assert all(r["f1"] < 0.9 for (t, i), r in recs.items() if t == "answer" and i not in kept)
    # a looser threshold keeps everything that is non-empty
    s2 = run_stats(_cfg(StatsConfig, setup, "filter0", min_f1=0.0), model=setup["model"], tokenizer=setup["tok"])
    assert s2["data"]["n_kept"] > s["data"]["n_kept"]
    assert (setup["root"] / "filter" / "table.md").read_text().count("Table 3") == 1


def _ctx(setup, **kw):
    cfg = PerturbConfig(**{**setup["base"], **kw})
    builder = sq.PromptBuilder("plain", setup["tok"])
    return phases.RunContext(cfg, setup["model"], setup["tok"], setup["sae"], None, builder)


def test_masking_an_empty_set_reproduces_the_unedited_prediction(setup):
    from gradsae.splice import RowEdit

    ctx = _ctx(setup)
    prompt = ctx.builder(CONTEXTS[0], "Question 0 about it?")
    plain, _ = ctx.generate([prompt])
    texts, _ = ctx.generate([prompt] * 3, edits=[None, RowEdit(zero=[]), RowEdit(zero=[], at="last")])
    assert texts == plain * 3


class _Spy:
    """Records the latents each forward call decodes (after edits): [(offset, He [B, T, C])]."""

    def __init__(self, sae):
        self.sae, self.calls, self._orig = sae, [], sae.decode

    def __enter__(self):
        def decode(h):
            self.calls.append(h.detach().clone())
            return self._orig(h)

        self.sae.decode = decode
        return self

    def __exit__(self, *a):
        del self.sae.decode


@pytest.mark.parametrize("side", ["top", "bottom"])
def test_topk_and_bottomk_edits_reach_every_position_including_generated(setup, side):
    s = run_stats(_cfg(StatsConfig, setup, "filter"), model=setup["model"], tokenizer=setup["tok"])
    assert s["data"]["n_kept"]
    recs = _records(setup["root"] / "filter")
    rec = next(r for (t, _), r in sorted(recs.items()) if t == "answer" and r["kept"])
    ctx = _ctx(setup, methods=["gradsae"], sets=[side], ks=["10"], max_new_tokens=4, stop="none")
    prompt = ctx.builder(*[(c, rec["question"]) for c in CONTEXTS if sq._context_id(c) == rec["context_id"]][0])
    lat = [e[0] for e in rec["sets"]["gradsae"][side][:10]]
    assert lat
    with _Spy(setup["sae"]) as spy:
        out = phases.perturb_example(ctx, AnswerRecord.from_json(rec), prompt).to_json()
    assert out["rows"] == 2 and out["cells"][f"gradsae/{side}/10"]["k"] == len(lat)
    assert len(spy.calls) >= 3  # the prompt pass and generated tokens (no stop string, EOS unlikely)
    T0 = spy.calls[0].shape[1]
    assert all(c.shape[1] == 1 for c in spy.calls[1:])  # KV cache: one new position per step
    for c in spy.calls:
        assert torch.all(c[1][:, lat] == 0)  # the edited row: zero at every position of every call
    # the control row still has those latents somewhere: the edit changed something
    assert torch.any(torch.cat([c[0][:, lat] for c in spy.calls]) != 0)
    assert T0 == len(setup["tok"](prompt)["input_ids"])


@pytest.mark.parametrize("at", ["all", "last"])
def test_steering_zeroes_own_set_and_injects_partner_values(setup, at):
    run_stats(_cfg(StatsConfig, setup, "filter"), model=setup["model"], tokenizer=setup["tok"])
    recs = _records(setup["root"] / "filter")
    kept = [r for (t, _), r in sorted(recs.items()) if t == "answer" and r["kept"]]
    a = next(r for r in kept if any(o["context_id"] == r["context_id"] and o["id"] != r["id"] for o in kept))
    b = next(o for o in kept if o["context_id"] == a["context_id"] and o["id"] != a["id"])
    cfg = SteerConfig(
        **{
            **setup["base"],
            "methods": ["gradsae"],
            "sets": ["top"],
            "ks": ["10"],
            "at": at,
            "max_new_tokens": 3,
            "stop": "none",
        }
    )
    ctx = phases.RunContext(
        cfg, setup["model"], setup["tok"], setup["sae"], None, sq.PromptBuilder("plain", setup["tok"])
    )
    prompt = ctx.builder(next(c for c in CONTEXTS if sq._context_id(c) == a["context_id"]), a["question"])
    own = [e[0] for e in a["sets"]["gradsae"]["top"][:10]]
    inj = {e[0]: e[2] for e in b["sets"]["gradsae"]["top"][:10]}  # --inject activation: mean activation
    with _Spy(setup["sae"]) as spy:
        out = phases.steer_example(ctx, AnswerRecord.from_json(a), AnswerRecord.from_json(b), prompt).to_json()
    assert out["partner"] == b["id"] and out["rows"] == 2
    cellv = out["cells"]["gradsae/top/10"]
    assert cellv["overlap"] == pytest.approx(overlap(own, list(inj)))
    T0 = spy.calls[0].shape[1]
    only_own = [c for c in own if c not in inj]
    ids, vals = torch.tensor(list(inj)), torch.tensor(list(inj.values()))
    for n, c in enumerate(spy.calls):
        H = c[1]  # [T, C] of the steered row
        if only_own:
            assert torch.all(H[:, only_own] == 0)
        first = 0 if at == "all" or n > 0 else T0 - 1
        torch.testing.assert_close(H[first:, ids], vals.expand(H.shape[0] - first, -1), atol=1e-6, rtol=0)
        if at == "last" and n == 0:
            assert not torch.allclose(H[:first, ids], vals.expand(first, -1))


def test_run_steer_partners_share_context(setup):
    s = ex.run_steer(_cfg(SteerConfig, setup, "steer"), model=setup["model"], tokenizer=setup["tok"])
    recs = _records(setup["root"] / "steer")
    ans = {i: r for (t, i), r in recs.items() if t == "answer"}
    steer = [r for (t, _), r in recs.items() if t == "steer"]
    assert len(steer) == s["data"]["n_kept"]
    for r in steer:
        if r["partner"]:
            assert ans[r["partner"]]["context_id"] == ans[r["id"]]["context_id"]
            assert ans[r["partner"]]["question"] != ans[r["id"]]["question"] and ans[r["partner"]]["kept"]
    assert s["steering"]["n"] + s["steering"]["n_without_partner"] == len(steer)
    assert (setup["root"] / "steer" / "steer.png").exists()


def test_interrupted_then_resumed_equals_uninterrupted(setup, monkeypatch):
    full = run_perturb(_cfg(PerturbConfig, setup, "full"), model=setup["model"], tokenizer=setup["tok"])
    assert full["perturbation"]["n"] == full["data"]["n_kept"] >= 3
    assert full["perturbation"]["control"]["agree"] == full["perturbation"]["n"]
    real = ex.perturb_example
    calls = []

    def interrupt_on_third(ctx, rec, prompt):
        calls.append(rec.id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(ctx, rec, prompt)

    monkeypatch.setattr(ex, "perturb_example", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_perturb(_cfg(PerturbConfig, setup, "resumed"), model=setup["model"], tokenizer=setup["tok"])
    lines = (setup["root"] / "resumed" / "examples.jsonl").read_text().splitlines()
    assert all(json.loads(ln) for ln in lines)  # a valid file after the interruption
    assert sum(json.loads(ln)["task"] == "perturb" for ln in lines) == 2
    calls.clear()
    monkeypatch.setattr(ex, "perturb_example", lambda *a: (calls.append(a[1].id), real(*a))[1])
    resumed = run_perturb(_cfg(PerturbConfig, setup, "resumed"), model=setup["model"], tokenizer=setup["tok"])
    assert len(calls) == full["data"]["n_kept"] - 2  # finished examples are not recomputed
    assert _strip(resumed) == _strip(full)
    calls.clear()
    again = run_perturb(_cfg(PerturbConfig, setup, "resumed"), model=setup["model"], tokenizer=setup["tok"])
    assert calls == [] and _strip(again) == _strip(full)


def test_a_failing_example_is_recorded_and_counted(setup, monkeypatch):
    real = ex.perturb_example
    victim = sorted(setup["kept"])[0]

    def flaky(ctx, rec, prompt):
        if rec.id == victim:
            raise RuntimeError("boom")
        return real(ctx, rec, prompt)

    monkeypatch.setattr(ex, "perturb_example", flaky)
    s = run_perturb(_cfg(PerturbConfig, setup, "fail"), model=setup["model"], tokenizer=setup["tok"])
    assert s["failed"]["perturb"] == 1 and s["perturbation"]["n"] == s["data"]["n_kept"] - 1
    assert s["failed"]["errors"] == [{"task": "perturb", "id": victim, "error": "RuntimeError: boom"}]
    assert "perturb 1" in (setup["root"] / "fail" / "table.md").read_text()
    # a rerun keeps the failure (finished); --retry-failed recomputes it
    monkeypatch.setattr(ex, "perturb_example", real)
    s2 = run_perturb(_cfg(PerturbConfig, setup, "fail"), model=setup["model"], tokenizer=setup["tok"])
    assert s2["failed"]["perturb"] == 1
    s3 = run_perturb(
        _cfg(PerturbConfig, setup, "fail", retry_failed=True), model=setup["model"], tokenizer=setup["tok"]
    )
    assert s3["failed"]["perturb"] == 0 and s3["perturbation"]["n"] == s3["data"]["n_kept"]


def test_resume_refuses_different_options(setup):
    run_stats(_cfg(StatsConfig, setup, "filter"), model=setup["model"], tokenizer=setup["tok"])
    with pytest.raises(GradsaeError, match="different options"):
        run_stats(_cfg(StatsConfig, setup, "filter", min_f1=0.5), model=setup["model"], tokenizer=setup["tok"])


def test_layer_sweep_writes_one_folder_per_layer_and_a_combined_table(setup):
    cfg = ExperimentConfig(
        **{
            **setup["base"],
            "out": str(setup["root"] / "sweep"),
            "layers": [0, 1],
            "tasks": ["perturb"],
            "ks": ["1"],
            "limit": 3,
        }
    )
    res = run_all(cfg, model=setup["model"], tokenizer=setup["tok"])
    assert [r["tag"] for r in res["runs"]] == ["L0", "L1"]
    assert {r["summary"]["layer"] for r in res["runs"]} == {"0", "1"}
    sweep = json.loads((setup["root"] / "sweep" / "sweep.json").read_text())
    assert sweep["schema"] == SWEEP_SCHEMA and len(sweep["runs"]) == 2
    assert (setup["root"] / "sweep" / "L0" / "summary.json").exists()
    assert "L1" in (setup["root"] / "sweep" / "table.md").read_text()


def test_bad_options_are_one_line_errors(setup):
    with pytest.raises(GradsaeError, match="clamp"):
        ex.run_steer(_cfg(SteerConfig, setup, "bad", clamp="5"), model=setup["model"], tokenizer=setup["tok"])
    with pytest.raises(GradsaeError, match="K="):
        run_stats(_cfg(StatsConfig, setup, "bad2", ks=["half"]), model=setup["model"], tokenizer=setup["tok"])
    with pytest.raises(GradsaeError, match="--layers"):
        run_stats(_cfg(StatsConfig, setup, "bad3", sae="x{layer}"), model=setup["model"], tokenizer=setup["tok"])


@pytest.mark.slow
def test_smollm2_perturb_on_the_dev_file(smollm2, tmp_path):
    """The real thing, small: bundled SmolLM2 + bundled SAE, 4 dev questions, few-shot prompt."""
    from gradsae.saes import bundled_saes
    from gradsae.squad.data import DEFAULT_DATA, PromptBuilder

    model, tok = smollm2
    chat = PromptBuilder("chat", tok)("Ctx.", "Q?")
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
    if DEFAULT_SAE not in bundled_saes():
        pytest.skip(f"bundled SAE {DEFAULT_SAE} not present")
    cfg = PerturbConfig(
        data=DEFAULT_DATA, limit=4, ks=["1", "50%"], sets=["top"], progress=False, out=str(tmp_path / "p")
    )
    s = run_perturb(cfg, model=model, tokenizer=tok)
    assert s["data"]["n_answered"] == 4 and s["failed"]["answer"] == 0
    assert s["perturbation"]["n"] == s["data"]["n_kept"]
    assert s["perturbation"]["control"]["agree"] == s["perturbation"]["n"]
    for f in ("config.json", "examples.jsonl", "summary.json", "table.md"):
        assert (tmp_path / "p" / f).exists()


def test_answers_from_reuses_the_answer_phase(setup, monkeypatch):
    """Steering with another rule in a new folder reuses the filter and rankings instead of re-answering,
    gives the same steering result as a run that answers itself, and refuses a mismatched source."""
    src = _cfg(PerturbConfig, setup, "ans_src")
    run_perturb(src, model=setup["model"], tokenizer=setup["tok"])
    own = ex.run_steer(
        _cfg(SteerConfig, setup, "ans_own", inject="score", clamp="0,50"), model=setup["model"], tokenizer=setup["tok"]
    )
    calls = []
    real = ex.answer_batch
    monkeypatch.setattr(ex, "answer_batch", lambda ctx, qs: (calls.append(len(qs)), real(ctx, qs))[1])
    reused = ex.run_steer(
        _cfg(SteerConfig, setup, "ans_reuse", inject="score", clamp="0,50", answers_from=src.out),
        model=setup["model"],
        tokenizer=setup["tok"],
    )
    assert calls == []  # nothing answered again
    assert reused["steering"] == own["steering"] and reused["data"] == own["data"]
    with pytest.raises(GradsaeError, match="min_f1"):
        ex.run_steer(
            _cfg(SteerConfig, setup, "ans_bad", min_f1=0.5, answers_from=src.out),
            model=setup["model"],
            tokenizer=setup["tok"],
        )
    with pytest.raises(GradsaeError, match="K=7"):
        ex.run_steer(
            _cfg(SteerConfig, setup, "ans_bad2", ks=["7"], answers_from=src.out),
            model=setup["model"],
            tokenizer=setup["tok"],
        )
    with pytest.raises(GradsaeError, match="no config.json"):
        ex.run_steer(
            _cfg(SteerConfig, setup, "ans_bad3", answers_from=str(setup["root"])),
            model=setup["model"],
            tokenizer=setup["tok"],
        )


def test_steering_without_kv_cache(setup):
    """--no-kv-cache re-runs the sequence each step: with --at last it must give what the cached loop gives;
    --at newest (the authors' rule) then runs too."""
    kw = dict(inject="score", clamp="0,50", steer_ks=["1"], sets=["top"])
    cached = ex.run_steer(
        _cfg(SteerConfig, setup, "kv_on", at="last", **kw), model=setup["model"], tokenizer=setup["tok"]
    )
    uncached = ex.run_steer(
        _cfg(SteerConfig, setup, "kv_off", at="last", kv_cache=False, **kw),
        model=setup["model"],
        tokenizer=setup["tok"],
    )
    assert uncached["steering"] == cached["steering"] and cached["steering"]["n"] > 0
    newest = ex.run_steer(
        _cfg(SteerConfig, setup, "kv_newest", at="newest", kv_cache=False, **kw),
        model=setup["model"],
        tokenizer=setup["tok"],
    )
    assert newest["steering"]["n"] == cached["steering"]["n"]


def test_results_folders_get_an_html_report(setup):
    """Every run writes report.html next to summary.json (a sweep also at its top); `gradsae report`
    rebuilds it without a model and refuses a folder without results in one line."""
    from gradsae.cli import main as cli_main

    cfg = ExperimentConfig(
        **{
            **setup["base"],
            "out": str(setup["root"] / "rep"),
            "layers": [0, 1],
            "tasks": ["perturb"],
            "ks": ["1"],
            "limit": 3,
        }
    )
    run_all(cfg, model=setup["model"], tokenizer=setup["tok"])
    for sub in ("L0", "L1", "."):
        page = (setup["root"] / "rep" / sub / "report.html").read_text()
        assert "<html" in page.lower() and "http://" not in page and "https://" not in page
    (setup["root"] / "rep" / "L0" / "report.html").unlink()
    assert cli_main(["report", str(setup["root"] / "rep" / "L0")]) == 0
    assert (setup["root"] / "rep" / "L0" / "report.html").exists()
    assert cli_main(["report", str(setup["root"])]) == 2


# ---- --shard and gradsae merge -------------------------------------------------------------------


def test_shards_partition_whole_contexts_in_order():
    qas = [sq.QA(f"q{i}", f"c{i // 3}", f"ctx {i // 3}", "?", ["a"]) for i in range(10)]  # contexts of 3, 3, 3, 1
    shards = [sq.shard_questions(qas, i, 3) for i in range(3)]
    assert sorted(q.id for s in shards for q in s) == sorted(q.id for q in qas)
    assert [q.id for q in shards[0]] == ["q0", "q1", "q2", "q9"]  # contexts 0 and 3
    for s in shards:
        assert len({q.context_id for q in s} & {q.context_id for t in shards if t is not s for q in t}) == 0
    assert sq.parse_shard("") is None and sq.parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(GradsaeError, match="--shard"):
            sq.parse_shard(bad)


def test_merged_shards_equal_the_unsharded_run(setup, capsys):
    """batch_size 3 = questions per context, so the shards' batches are the unsharded run's batches."""
    from gradsae import cli

    kw = dict(tasks=["perturb", "steer", "stats"], ks=["1"])
    full = run_all(_cfg(ExperimentConfig, setup, "unsharded", **kw), model=setup["model"], tokenizer=setup["tok"])
    for i in range(2):
        run_all(
            _cfg(ExperimentConfig, setup, f"shard{i}", shard=f"{i}/2", **kw),
            model=setup["model"],
            tokenizer=setup["tok"],
        )
    shards = [str(setup["root"] / f"shard{i}") for i in range(2)]
    assert cli.main(["merge", ",".join(shards), "--out", str(setup["root"] / "merged")]) == 0
    merged = json.loads((setup["root"] / "merged" / "summary.json").read_text())
    assert _strip(merged) == _strip(full)
    assert (setup["root"] / "merged" / "table.md").read_text() == (setup["root"] / "unsharded" / "table.md").read_text()
    assert (setup["root"] / "merged" / "report.html").exists()

    def untimed(folder):
        return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in _records(folder).items()}

    assert untimed(setup["root"] / "merged") == untimed(setup["root"] / "unsharded")

    # the same through benchmarks/squad705.py: shards packed as committed files, then rebuilt from them alone
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import squad705

    committed = setup["root"] / "committed"
    for i, s in enumerate(shards):
        squad705.pack(Path(s), committed / f"shard-{i}-of-2")
    conf = json.loads((Path(shards[0]) / "config.json").read_text())
    mp = pytest.MonkeyPatch()
    mp.setattr(squad705, "RESULTS", committed)
    mp.setattr(squad705, "SHARDS", 2)
    mp.setattr(squad705, "DATA", Path(conf["config"]["data"]))
    try:
        rebuilt = squad705.report(setup["root"] / "rebuilt")
    finally:
        mp.undo()
    assert _strip(rebuilt) == _strip(full)
    assert (setup["root"] / "rebuilt" / "table.md").read_text() == (
        setup["root"] / "unsharded" / "table.md"
    ).read_text()
    capsys.readouterr()
    # one shard alone, a shard given twice, or another run's folder: one line each
    assert cli.main(["merge", shards[0], "--out", str(setup["root"] / "m1")]) == 2
    assert "1/2 missing" in capsys.readouterr().err
    assert cli.main(["merge", f"{shards[0]},{shards[0]}", "--out", str(setup["root"] / "m2")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert cli.main(["merge", f"{shards[0]},{setup['root'] / 'unsharded'}", "--out", str(setup["root"] / "m3")]) == 2
    assert "not a shard" in capsys.readouterr().err
    assert cli.main(["merge", ",".join(shards), "--out", str(setup["root"] / "merged")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_a_shard_folder_refuses_another_shard(setup):
    run_stats(_cfg(StatsConfig, setup, "sh", shard="0/2"), model=setup["model"], tokenizer=setup["tok"])
    with pytest.raises(GradsaeError, match="shard"):
        run_stats(_cfg(StatsConfig, setup, "sh", shard="1/2"), model=setup["model"], tokenizer=setup["tok"])


def test_the_power_figure_is_the_n_at_which_the_interval_would_exclude_zero():
    import math
    import statistics

    from gradsae.stats import n_to_separate, t_interval

    def sample(n, mean, sd):  # n values with exactly this mean and sample standard deviation
        base = [(-1) ** i * (1 + (i % 3)) for i in range(n)]
        m, s = statistics.mean(base), statistics.stdev(base)
        return [mean + sd * (b - m) / s for b in base]

    observed = sample(43, 8.7, 30.0)
    need = n_to_separate(observed)
    assert need is not None and need > 43
    lo_at, _ = t_interval(sample(need, 8.7, 30.0))
    lo_before, _ = t_interval(sample(need - 1, 8.7, 30.0))
    assert lo_at > 0 >= lo_before
    assert abs(need - (1.96 * 30 / 8.7) ** 2) < 5  # near the normal approximation, a little above it
    assert n_to_separate([1.0, 1.0]) == 2 and n_to_separate([1.0, -1.0]) is None and n_to_separate([3.0]) is None
    assert math.isclose(statistics.mean(observed), 8.7)


def test_shards_merge_across_installs_of_the_bundled_data_but_not_other_paths():
    from gradsae.squad.merge import check_shards

    def conf(i, fewshot):
        return {"fingerprint": {"shard": f"{i}/2", "fewshot_data": fewshot, "limit": 0}}

    a, b = "/x/src/gradsae/bundled/data/fewshot.json", "/y/src/gradsae/bundled/data/fewshot.json"
    assert check_shards({Path("s0"): conf(0, a), Path("s1"): conf(1, b)}) == 2
    with pytest.raises(GradsaeError, match="different options"):
        check_shards({Path("s0"): conf(0, "/x/mine.json"), Path("s1"): conf(1, "/y/mine.json")})
