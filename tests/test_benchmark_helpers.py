"""Pure helpers of the benchmark scripts whose numbers the README quotes: intervals and verdicts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_sae_comparison import compare, mean_ci  # noqa: E402
from bench_splice_survival import wilson  # noqa: E402


def test_mean_ci_is_the_student_t_interval():
    from scipy import stats

    m, h = mean_ci([1.0, 2.0, 3.0])
    lo, hi = stats.t.interval(0.95, 2, loc=2.0, scale=stats.sem([1.0, 2.0, 3.0]))
    assert m == 2.0 and h == pytest.approx((hi - lo) / 2)
    assert mean_ci([5.0]) == (5.0, None)


def test_wilson_matches_scipy():
    from scipy.stats import binomtest

    ci = binomtest(6, 57).proportion_ci(method="wilson")
    assert wilson(6, 57) == (round(ci.low, 3), round(ci.high, 3))
    assert wilson(0, 0) is None


def _row(arch, nmse):
    from bench_sae_comparison import METRICS

    row = {"hook": "blocks.14.hook_resid_post", "k": 32, "train_tokens": 100, "architecture": arch}
    row.update({m: None for m in METRICS})
    row["NMSE"] = nmse
    return row


def test_verdicts_need_separated_intervals():
    v = compare([_row("topk", (0.10, 0.01)), _row("gsae", (0.20, 0.01))])
    assert v == ["blocks.14.hook_resid_post k=32: NMSE, gsae vs topk: topk lower (0.1000 ± 0.0100 vs 0.2000 ± 0.0100)"]
    assert "intervals overlap" in compare([_row("topk", (0.10, 0.06)), _row("gsae", (0.20, 0.06))])[0]
    assert "one seed" in compare([_row("topk", (0.10, None)), _row("gsae", (0.20, None))])[0]


def test_the_comparison_report_rebuilds_from_result_files_alone(tmp_path):
    """docs/results/gsae-style files (one per SAE and seed) -> grouped rows with t intervals and verdicts."""
    import json
    from types import SimpleNamespace

    from bench_sae_comparison import load_results, report

    def ev(arch, nmse, l_added):
        return {
            "sae_cfg": {
                "hook_name": "blocks.14.hook_resid_post",
                "architecture": arch,
                "k": 32,
                "d_sae": 4096,
                "beta": 0.5 if arch == "gsae" else 0.0,
            },
            "eval_result_metrics": {
                "reconstruction_quality": {"nmse": nmse},
                "model_performance_preservation": {"l_added": l_added},
            },
            "eval_result_metrics_by_selection": {"gradient": {"model_performance_preservation": {"l_added": 0.3}}}
            if arch == "gsae"
            else {},
            "eval_result_details": [],
        }

    for s, (a, b) in enumerate([(0.10, 0.20), (0.11, 0.21), (0.12, 0.19)]):
        for arch, nmse, la in (("topk", a, b), ("gsae", a + 0.05, b - 0.05)):
            rec = {"architecture": arch, "k": 32, "seed": s, "training_tokens": 1000, "eval": ev(arch, nmse, la)}
            (tmp_path / f"{arch}-k32-s{s}.json").write_text(json.dumps(rec))
    for s in range(2):  # a second k for TopK: the L0 frontier figure (Fig. 4) has a line to draw
        rec = {"architecture": "topk", "k": 64, "seed": s, "training_tokens": 1000, "eval": ev("topk", 0.05, 0.1)}
        rec["eval"]["sae_cfg"]["k"] = 64
        (tmp_path / f"topk-k64-s{s}.json").write_text(json.dumps(rec))
    (tmp_path / "lr-sweep").mkdir()  # subfolders are not part of the comparison
    res = report(load_results(tmp_path), SimpleNamespace(json=str(tmp_path / "out" / "cmp.json")))
    assert (tmp_path / "out" / "cmp_frontier.png").stat().st_size > 10_000
    rows = {r["architecture"]: r for r in res["rows"] if r["k"] == 32}
    assert rows["topk"]["seeds"] == [0, 1, 2] and rows["topk"]["NMSE"][0] == pytest.approx(0.11)
    assert rows["gsae"]["L_added (gradient selection)"][0] == pytest.approx(0.3)
    assert any("NMSE, gsae vs topk: topk lower" in v for v in res["verdicts"])
    assert any("L_added, gsae vs topk: gsae lower" in v for v in res["verdicts"])
    assert json.loads((tmp_path / "out" / "cmp.json").read_text())["verdicts"] == res["verdicts"]


def test_saebench_scores_are_derived_from_the_zero_ablation_reference_only_on_the_same_sequences():
    from bench_sae_comparison import with_saebench_scores

    ref = {"ce_loss_without_sae": 3.0, "ce_loss_with_ablation": 7.0, "kl_div_with_ablation": 4.0}

    def ev(clean):
        return {
            "eval_result_metrics": {
                "model_performance_preservation": {"ce_loss_without_sae": clean, "ce_loss_with_sae": 3.4},
                "model_behavior_preservation": {"kl_div_with_sae": 0.5},
            },
            "eval_result_metrics_by_selection": {},
        }

    m = with_saebench_scores(ev(3.0), ref)["eval_result_metrics"]
    assert m["model_performance_preservation"]["ce_loss_score"] == pytest.approx((7.0 - 3.4) / (7.0 - 3.0))
    assert m["model_behavior_preservation"]["kl_div_score"] == pytest.approx((4.0 - 0.5) / 4.0)
    other = with_saebench_scores(ev(3.1), ref)["eval_result_metrics"]  # measured on other sequences
    assert "ce_loss_score" not in other["model_performance_preservation"]
    assert with_saebench_scores(ev(3.0), None) == ev(3.0)


def test_the_study_picks_its_learning_rate_and_lists_its_chunks(tmp_path, monkeypatch, capsys):
    import json

    import gsae_study as st

    assert [st.lr_name(x) for x in (5e-4, 1e-3, 2e-3, 4e-3)] == ["5e-4", "1e-3", "2e-3", "4e-3"]
    monkeypatch.setattr(st, "RESULTS", tmp_path)
    assert st.study_lr() is None
    (tmp_path / "lr-sweep").mkdir()
    for lr, la in ((5e-4, 0.21), (2e-3, 0.13), (4e-3, 0.15)):
        rec = {"eval": {"eval_result_metrics": {"model_performance_preservation": {"l_added": la}}}}
        (tmp_path / "lr-sweep" / f"topk-k32-lr{st.lr_name(lr)}.json").write_text(json.dumps(rec))
    assert st.study_lr() == 2e-3
    names = [c.name for c in st.chunks(st.study_lr())]
    assert names[:5] == ["lr", "g0-topk", "g0-gsae", "e0", "f0"] and len(names) == 13
    f0 = next(c for c in st.chunks(2e-3) if c.name == "f0")
    assert [f for f, _ in f0.results] == ["klmse-k32-s0.json", "mseft-k32-s0.json"]
    klmse, mse = (dict(zip(args, args[1:])) for _, args in f0.runs)  # the two arms differ only in their loss
    assert klmse["--init-from"] == mse["--init-from"] == "{runs}/g0-topk/topk_k32"
    assert klmse["--max-tokens"] == mse["--max-tokens"] == str(st.FINE_TUNE_TOKENS) and "--e2e-balance" in f0.runs[0][1]
    assert klmse["--lr"] == mse["--lr"] == "2e-4"  # a tenth of the study's rate: the fine-tune continues a decayed run
    g0 = next(c for c in st.chunks(2e-3) if c.name == "g0-gsae")
    assert [f for f, _ in g0.results] == [f"gsae-k{k}-s0.json" for k in st.KS]
    assert ["--lr", "2e-3"] == g0.runs[0][1][-2:]
    st.status()
    assert "next: python benchmarks/gsae_study.py run lr" in capsys.readouterr().out  # lr-sweep lacks 1e-3


def test_claim_verdicts_come_from_the_paired_per_seed_interval():
    from gsae_claims import judge

    assert judge("less", 0, [-0.02, -0.021, -0.019]) == "reproduced"
    assert judge("less", 0, [0.02, 0.021, 0.019]) == "not reproduced"
    assert judge("more", 0, [0.02, 0.021, 0.019]) == "reproduced"
    assert judge("less", 0, [-0.02, 0.01, -0.005]) == "inconclusive"
    assert judge("less", 0, [-0.02]).startswith("inconclusive (one seed")
    assert judge("comparable", 0, [0.01, -0.01, 0.0]) == "reproduced"
    assert judge("comparable", 0, [0.3, 0.31, 0.29]) == "not reproduced"
    assert (
        judge("ratio", 5.0, [6.0, 6.2, 5.9]) == "reproduced"
        and judge("ratio", 5.0, [1.1, 1.2, 1.0]) == "not reproduced"
    )
    assert judge("reduction", 0.2, [0.05, 0.06, 0.04]) == "not reproduced"


def _claim_file(folder, arm, k, seed, l_added, dead5=0.3, steer=(0.001, 0.2)):
    import json

    ev = {
        "eval_result_metrics": {
            "model_performance_preservation": {"l_added": l_added},
            "reconstruction_quality": {"nmse": 0.07},
            "misc": {"dead_frac_train_5batches": dead5},
            "steering": {"alphas": [10.0, 100.0], "assoc_mean": [0.0, steer[0]], "other_mean": [0.0, steer[1]]},
        },
        "eval_result_metrics_by_selection": {"gradient": {"model_performance_preservation": {"l_added": l_added + 0.1}}}
        if arm == "gsae"
        else {},
        "eval_result_details": [
            {
                "distributions": {  # 10 latents: 1 dead, 6 at 10^-3, 2 at 10^-1.5, 1 at 10^-0.5
                    "density_log10_edges": [-7.0 + 0.5 * i for i in range(15)],
                    "density_log10_counts": [0] * 8 + [6, 0, 0, 2, 0, 1],
                    "dead": 1,
                }
            }
        ],
    }
    rec = {"architecture": arm, "k": k, "seed": seed, "training_tokens": 1_000_000, "eval": ev}
    (folder / f"{arm}-k{k}-s{seed}.json").write_text(json.dumps(rec))


def test_the_claims_table_rebuilds_from_result_files(tmp_path):
    import json

    from gsae_claims import decide_all, load, markdown

    for s in range(3):
        _claim_file(tmp_path, "topk", 32, s, 0.20 + 0.001 * s, dead5=0.40)
        _claim_file(tmp_path, "gsae", 32, s, 0.18 + 0.001 * s, dead5=0.30, steer=(0.006, 0.1))
    _claim_file(tmp_path, "e2e", 32, 0, 0.10)
    (tmp_path / "notes.json").write_text("{}")  # not a result file
    (tmp_path / "table2").mkdir()
    for s in range(3):  # Table 2: the g-SAE's right tail above its left tail in every seed, TopK flat
        tails = [
            {"arm": arm, "part": part, "mean": value + 0.001 * s}
            for arm, parts in (("gsae", (("left tail", 2.0), ("right tail", 2.9))), ("topk", (("right tail", 2.4),)))
            for part, value in parts
        ]
        (tmp_path / "table2" / f"s{s}.json").write_text(json.dumps({"seed": s, "tails": tails}))
    rows = decide_all(load(tmp_path))
    by = {(r["claim"], r["selection"]): r for r in rows}
    assert by[("g-SAE adds less loss than TopK (L_added)", "plain TopK")]["verdict"] == "reproduced"
    grad = by[("g-SAE adds less loss than TopK (L_added)", "gradient")]  # g-SAE 0.1 worse with gradient selection
    assert grad["verdict"] == "not reproduced" and grad["statistic"][0] == pytest.approx(0.08)
    assert by[
        ("g-SAE has fewer dead latents than TopK (none in 5 training batches of ~1k tokens)", "gradient (training)")
    ]["seeds"] == [
        0,
        1,
        2,
    ]
    assert by[("... over 5× more (largest α)", "plain TopK")]["verdict"] == "reproduced"  # 6×
    assert by[("E2E adds less loss than TopK at equal L0 (L_added)", "")]["verdict"].startswith(
        "inconclusive (one seed"
    )
    dens = by[("g-SAE has fewer latents firing on > 1% of tokens", "plain TopK")]
    assert dens["ours_a"][0] == pytest.approx(0.3)  # (2 + 1) / 10, the dead latent counted as density 0
    within = by[("g-SAE's right tail has larger |∇L·ŵ| than its left tail", "")]
    assert within["verdict"] == "reproduced" and within["statistic"][0] == pytest.approx(0.9)
    assert by[("g-SAE's right tail has larger |∇L·ŵ| than TopK's right tail", "")]["seeds"] == [0, 1, 2]
    assert all(r["k"] == 32 for r in rows)  # no row for a k without both arms
    text = markdown(rows)
    assert "**reproduced**" in text and "**not reproduced**" in text and "1M tokens (1/14 of the paper's)" in text


def test_the_committed_claims_table_is_what_the_committed_results_give():
    """docs/gsae_claims.md is regenerated whenever a chunk's files land (python benchmarks/gsae_claims.py
    --markdown docs/gsae_claims.md --json docs/results/gsae_claims.json)."""
    from gsae_claims import RESULTS, decide_all, load, markdown

    committed = (Path(__file__).resolve().parents[1] / "docs" / "gsae_claims.md").read_text()
    assert committed.endswith(markdown(decide_all(load(RESULTS))))


def test_a_study_eval_is_reused_only_for_the_weights_it_scored(tmp_path):
    import os

    from gsae_study import eval_is_current

    sae, ev = tmp_path / "sae", tmp_path / "eval.json"
    sae.mkdir()
    assert not eval_is_current(ev, sae)
    (sae / "sae_weights.safetensors").write_bytes(b"w")
    ev.write_text("{}")
    os.utime(sae / "sae_weights.safetensors", (1_000, 1_000))
    assert eval_is_current(ev, sae)
    os.utime(sae / "sae_weights.safetensors", (ev.stat().st_mtime + 10,) * 2)  # retrained after the eval
    assert not eval_is_current(ev, sae)


def test_a_long_chunk_runs_in_parts(tmp_path, capsys):
    import gsae_study as st

    st.run_chunk("e1", tmp_path, dry_run=True, threads=2, max_steps=500)
    train = [line for line in capsys.readouterr().out.splitlines() if " train " in line]
    assert len(train) == 1 and "--max-steps 500" in train[0] and train[0].endswith(f"--out {tmp_path / 'e1'}")
    st.run_chunk("e1", tmp_path, dry_run=True, threads=2)
    assert "--max-steps" not in capsys.readouterr().out


def test_the_study_status_says_which_arms_a_table2_file_lacks(tmp_path, monkeypatch):
    import json

    import gsae_study as st

    monkeypatch.setattr(st, "TABLE2", tmp_path)
    assert st.table2_state(0) == "missing"
    (tmp_path / "s0.json").write_text(json.dumps({"tails": [{"arm": "topk"}, {"arm": "gsae"}]}))
    assert st.table2_state(0) == "no e2e yet"
    (tmp_path / "s0.json").write_text(json.dumps({"tails": [{"arm": a} for a in ("topk", "gsae", "e2e")]}))
    assert st.table2_state(0) == "done"


def test_table2_rerun_once_e2e_lands_uses_a_new_sensitivity_folder(tmp_path, monkeypatch):
    """A seed's Table 2 first made without E2E and rerun after its chunk must not reuse the first run's folder
    (`gradsae sensitivity` refuses one written with other SAEs), and the rerun's file has all three arms."""
    import json

    import gsae_study as st

    monkeypatch.setattr(st, "TABLE2", tmp_path / "results")
    runs, outs, real_run = tmp_path / "runs", [], st.subprocess.run

    def fake_sensitivity(cmd, **kw):
        if "sensitivity" not in cmd:
            return real_run(cmd, **kw)  # git, for the record's commit
        out, saes = Path(cmd[cmd.index("--out") + 1]), cmd[cmd.index("--sae") + 1].split(",")
        assert not out.exists()
        out.mkdir(parents=True)
        (out / "sensitivity.json").write_text(json.dumps({"tails": [{"sae": s, "tail": "right"} for s in saes]}))
        outs.append(out)

    monkeypatch.setattr(st.subprocess, "run", fake_sensitivity)
    for arm in ("topk", "gsae"):
        (runs / st.TABLE2_ARMS[arm].format(s=1)).mkdir(parents=True)
    st.write_table2(1, runs, threads=1)
    assert st.table2_state(1) == "no e2e yet"
    (runs / st.TABLE2_ARMS["e2e"].format(s=1)).mkdir(parents=True)
    st.write_table2(1, runs, threads=1)
    assert st.table2_state(1) == "done" and outs[0] != outs[1]


def test_every_committed_study_result_records_a_command_that_can_be_rerun():
    import json

    from gsae_study import RESULTS

    files = sorted(RESULTS.glob("*.json"))
    assert files
    for f in files:
        cmd = json.loads(f.read_text())["train_command"]
        assert cmd[:2] == ["gradsae", "train"] and "--no-progress" not in cmd and "--max-steps" not in cmd, f.name
