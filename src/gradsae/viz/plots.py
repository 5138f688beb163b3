"""The one matplotlib setup: every figure of gradsae is drawn through ``pyplot()`` and turned into PNG bytes by
``figure_png`` (the caller writes them to a file or embeds them in a page).

    pyplot() -> matplotlib.pyplot                         the Agg backend: no display needed
    figure_png(fig, dpi, tight=False) -> bytes            the figure as PNG (closed; no timestamp, same bytes each run)
    k_curves(summary) -> {"perturb": png, "steer": png}   EM and F1 vs K, one line per method × set, 95% CI bars

matplotlib is imported on first use, so importing this module is cheap.
"""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, dpi: int = 110, tight: bool = False) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed; ``tight`` crops to the drawn area)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None, metadata={"Software": None})
    pyplot().close(fig)
    return buf.getvalue()


def k_curves(s: dict) -> dict[str, bytes]:
    """EM and F1 vs K for the perturbation and steering sections of a summary.json (those present)."""
    plt = pyplot()
    out = {}
    for sec_name, name, title in (
        ("perturbation", "perturb", "Perturbation: zero the set"),
        ("steering", "steer", "Local steering: vs partner's answers"),
    ):
        sec = s.get(sec_name)
        if not sec:
            continue
        ks = sec.get("ks", s["ks"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, metric in zip(axes, ("em", "f1")):
            for m in s["methods"]:
                for side in s["sets"]:
                    cs = [sec["cells"][m][side][k] for k in ks]
                    ys = [c[metric] if c[metric] is not None else float("nan") for c in cs]
                    lo = [y - c[f"{metric}_ci"][0] if c[f"{metric}_ci"][0] is not None else 0 for y, c in zip(ys, cs)]
                    hi = [c[f"{metric}_ci"][1] - y if c[f"{metric}_ci"][1] is not None else 0 for y, c in zip(ys, cs)]
                    ax.errorbar(
                        range(len(ks)),
                        ys,
                        yerr=[lo, hi],
                        marker="o",
                        capsize=3,
                        linestyle="-" if side == "top" else "--",
                        color="tab:red" if m == "gradsae" else "tab:blue",
                        label=f"{'GradSAE' if m == 'gradsae' else 'Baseline'} {'TopK' if side == 'top' else 'BottomK'}",
                    )
            ax.set_xticks(range(len(ks)), [f"K={k}" for k in ks])
            ax.set_ylabel(metric.upper())
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title} (n={sec['n']}) — {s['sae']}")
        fig.tight_layout()
        out[name] = figure_png(fig)
    return out
