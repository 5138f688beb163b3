"""table.md: Table 1 (upper/lower) and Table 3 in the paper's layout, and the sweep table (Tables 4, 5)."""

from __future__ import annotations

from typing import Sequence


def verdict_word(v: dict) -> str:
    """ "holds", "does not hold", "not enough evidence (n = N)" or "not measured" (older summaries have no
    ``verdict`` and only ``holds``)."""
    if v.get("verdict"):
        return v["verdict"]
    return {True: "holds", False: "does not hold", None: "not measured"}[v.get("holds")]


def _unspliced_lines(d: dict) -> list[str]:
    u = d.get("unspliced")
    if not u:
        return []
    return [
        f"Without the SAE the model answers {u['n_kept']} of {u['n']} correctly (F1 ≥ {d['min_f1']}); EM "
        f"{_fmt(u, 'em')}, F1 {_fmt(u, 'f1')}."
    ]


def _fmt(c: dict | None, key: str, ci: bool = True) -> str:
    if not c or c.get(key) is None:
        return "–"
    lo, hi = c.get(f"{key}_ci", [None, None])
    return f"{c[key]:.1f}" + (f" ({lo:.0f}–{hi:.0f})" if ci and lo is not None else "")


def table_markdown(s: dict) -> str:
    """table.md: Table 1 (upper/lower) and Table 3 in the paper's layout, n and 95% CI per cell."""
    d = s["data"]
    L = [
        f"# GradSAE on SQuAD — {s['model']}, SAE {s['sae']} ({s['layer']})",
        "",
        f"{d['n_kept']} of {d['n_answered']} answered questions kept (F1 ≥ {d['min_f1']} through the SAE splice; "
        f"{d['n_examples']} loaded). Unedited accuracy of the spliced model on all answered: EM "
        f"{_fmt(d['unedited'], 'em')}, F1 {_fmt(d['unedited'], 'f1')}.",
        f"Failed (recorded, not dropped): answer {s['failed']['answer']}, perturb {s['failed']['perturb']}, "
        f"steer {s['failed']['steer']}.",
        *_unspliced_lines(d),
        *[f"**Warning:** {w}." for w in s.get("warnings", [])],
        "",
        "Cells: mean (95% CI); EM Wilson interval, F1 Student-t interval; n = examples per cell.",
        "",
    ]
    names = {"baseline": "Baseline", "gradsae": "GradSAE"}

    def block(title, sec, arrow, wo, ks):
        L.append(f"## {title}")
        L.append("")
        head = "| Method | Set | n | w/o EM | w/o F1 | " + " | ".join(f"K={k} EM | K={k} F1" for k in ks) + " |"
        L.append(head)
        L.append("|" + "---|" * (5 + 2 * len(ks)))
        for m in s["methods"]:
            for side in s["sets"]:
                cells = sec["cells"][m][side]
                n = max((cells[k]["n"] for k in ks), default=0)
                L.append(
                    f"| {names.get(m, m)} | {'TopK' if side == 'top' else 'BottomK'} {arrow[side]} | {n} | "
                    f"{_fmt(wo, 'em', False)} | {_fmt(wo, 'f1', False)} | "
                    + " | ".join(f"{_fmt(cells[k], 'em')} | {_fmt(cells[k], 'f1')}" for k in ks)
                    + " |"
                )
        L.append("")

    if "perturbation" in s:
        p = s["perturbation"]
        block(
            "Table 1 (upper): perturbation — zero the set at every position",
            p,
            {"top": "↓", "bottom": "↑"},
            p["control"],
            s["ks"],
        )
        L.append(
            f"Control row (unedited, same batch): {p['control']['agree']}/{p['n']} predictions identical to "
            "the filtering run."
        )
        L.append("")
    if "steering" in s:
        st = s["steering"]
        block(
            f"Table 1 (lower): local steering — scored against the partner's answers (inject {st['inject']}, "
            f"at {st['at']}, clamp {st['clamp'] or 'none'})",
            st,
            {"top": "↑", "bottom": "↓"},
            st["unsteered"],
            st["ks"],
        )
        L.append(f"{st['n']} examples had a kept partner on the same context; {st['n_without_partner']} had none.")
        L.append("")
        L.append("Overlap of the example's set with its partner's (%) and F1 against the example's own answers:")
        L.append("")
        L.append("| Method | Set | " + " | ".join(f"K={k} overlap | K={k} own F1" for k in st["ks"]) + " |")
        L.append("|" + "---|" * (2 + 2 * len(st["ks"])))
        for m in s["methods"]:
            for side in s["sets"]:
                c = st["cells"][m][side]
                L.append(
                    f"| {names.get(m, m)} | {'TopK' if side == 'top' else 'BottomK'} | "
                    + " | ".join(
                        f"{c[k].get('overlap', float('nan')):.1f} | {c[k].get('own_f1', float('nan')):.1f}"
                        if c[k]["n"]
                        else "– | –"
                        for k in st["ks"]
                    )
                    + " |"
                )
        L.append("")
    if "stats" in s:
        t = s["stats"]

        def pc(x):
            return "–" if x is None else f"{x:.2f}%"

        def num(x):
            return "–" if x is None else f"{x:.2f}"

        L += [
            f"## Table 3: latent statistics (K = 50%, n = {t['n']} kept examples, "
            f"{t['n_context_pairs']} same-context pairs)",
            "",
            "| | Baseline | GradSAE |",
            "|---|---|---|",
            f"| Activation Avg. (active at last prompt token) | {num(t['active_last_mean'])} | |",
            f"| Active at any position | {num(t['active_any_mean'])} | |",
            f"| 50% Avg. | {num(t['k50_mean'])} | |",
            f"| Cross TopK Overlap | {pc(t['cross_top_overlap'])} | |",
            f"| Cross BottomK Overlap | {pc(t['cross_bottom_overlap'])} | |",
            f"| Inner TopK Overlap | {pc(t['inner']['baseline']['top'])} | {pc(t['inner']['gradsae']['top'])} |",
            f"| Inner BottomK Overlap | {pc(t['inner']['baseline']['bottom'])} | "
            f"{pc(t['inner']['gradsae']['bottom'])} |",
            "",
        ]
    L.append("## Research questions")
    L.append("")
    for k, v in s["rq"].items():
        L.append(f"- **{k.upper()}** {verdict_word(v)}: {v['text']}")
    L.append("")
    return "\n".join(L)


def sweep_markdown(runs: Sequence[dict]) -> str:
    """Combined table over runs (the layout of the paper's Tables 4 and 5): every K, EM/F1, n."""
    L = ["# GradSAE sweep — perturbation (EM / F1)", ""]
    for r in runs:
        s = r["summary"]
        L.append(f"## {r['tag']}: SAE {s['sae']} ({s['layer']}), {s['data']['n_kept']} kept")
        L.append("")
        if "perturbation" not in s:
            L.append("(perturbation not run)")
            L.append("")
            continue
        ks = s["ks"]
        L.append("| Method | Set | " + " | ".join(f"K={k} EM | K={k} F1" for k in ks) + " |")
        L.append("|" + "---|" * (2 + 2 * len(ks)))
        for m in s["methods"]:
            for side in s["sets"]:
                c = s["perturbation"]["cells"][m][side]
                L.append(
                    f"| {m} | {side} | " + " | ".join(f"{_fmt(c[k], 'em')} | {_fmt(c[k], 'f1')}" for k in ks) + " |"
                )
        L.append("")
        if "steering" in s:
            st = s["steering"]
            L.append(
                f"Steering (n={st['n']}) GradSAE TopK F1: "
                + ", ".join(
                    f"K={k} {_fmt(st['cells']['gradsae']['top'][k], 'f1', False)}"
                    for k in st["ks"]
                    if "gradsae" in st["cells"] and "top" in st["cells"]["gradsae"]
                )
            )
            L.append("")
    return "\n".join(L)
