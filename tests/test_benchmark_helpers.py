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
