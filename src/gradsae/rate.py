"""``gradsae rate``: blind interpretability rating of latents from two or more SAEs (g-SAE paper §4.6).

Build: ``gradsae rate --sae A,B --n-per-sae 20 --seed S --out page.html`` samples latents (seeded) from each
SAE's dashboard, shuffles them together and writes one self-contained page: per item, activating examples
(top contexts and random lower-band contexts) and summary information (density, promoted tokens), and the
question "is this latent interpretable?" with Yes / Maybe / No and an optional note. The page never names the
SAE: the item -> (SAE, latent) mapping goes to ``page.key.json`` beside it, for the person who scores.
Answers persist in the browser's localStorage while the page is open and are exported as JSON (a download
button; the same JSON is shown in a text box to copy).

Score: ``gradsae rate --score r1.json,r2.json --key page.key.json`` joins the raters' files, unblinds and
prints per SAE the Yes / Maybe / No rates with 95% Wilson intervals, and writes a plot.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import opt
from .errors import GradsaeError
from .stats import wilson_interval

ANSWERS = ("yes", "maybe", "no")
RATINGS_SCHEMA = "gradsae.ratings/1"
KEY_SCHEMA = "gradsae.rating-key/1"


@dataclass(kw_only=True)
class RateConfig:
    """Blind interpretability rating (g-SAE §4.6): build a page that mixes latents of 2+ SAEs with the SAE
    hidden, or (--score) unblind raters' exported answers and report per-SAE Yes/Maybe/No rates."""

    sae: list[str] = opt(
        [],
        "SAEs to compare (comma-separated): bundled names or folders with a dashboard.json "
        "beside them, or dashboard files/folders",
    )
    n_per_sae: int = opt(20, "latents sampled per SAE (among those with enough activating contexts)")
    n_examples: int = opt(6, "top-activating contexts shown per latent")
    n_random: int = opt(2, "random lower-activation contexts shown per latent")
    min_contexts: int = opt(3, "only latents with at least this many top contexts are sampled")
    seed: int = opt(0, "seed of the sampling and the order")
    out: str = opt("rate.html", "the page to write; the key goes to <page>.key.json beside it")
    score: list[str] = opt([], "score mode: exported ratings files (comma-separated), one or more raters")
    key: str = opt("", "score mode: the key file written with the page")
    plot: str = opt("", "score mode: plot file (default: rates.png beside the key)")


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n (``gradsae.stats``); (0, 1) when n = 0."""
    return wilson_interval(k, n) or (0.0, 1.0)


@dataclass
class SaeRates:
    """Per-SAE counts over all rated items of all raters.

    Attributes:
        sae: the SAE.
        n: ratings counted.
        counts: answer -> count.
        rates: answer -> share (0-1); ci: answer -> (low, high) 95% Wilson interval.
        n_latents: distinct latents rated; n_raters: distinct raters.
    """

    sae: str
    n: int
    counts: dict[str, int]
    rates: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_latents: int
    n_raters: int


def score_ratings(key: dict, ratings: Sequence[dict]) -> list[SaeRates]:
    """Unblind: join each rater's answers with the key and count per SAE."""
    items = key["items"]
    per: dict[str, dict] = {
        s: {"counts": {a: 0 for a in ANSWERS}, "latents": set(), "raters": set()} for s in key["saes"]
    }
    for i, r in enumerate(ratings):
        rater = r.get("rater") or f"rater{i + 1}"
        for item, ans in r["ratings"].items():
            a = ans.get("answer")
            if a is None:  # left unanswered on the page
                continue
            a = str(a).strip().lower()
            sae = items[item]["sae"]
            per[sae]["counts"][a] += 1
            per[sae]["latents"].add(items[item]["latent"])
            per[sae]["raters"].add(rater)
    out = []
    for sae, d in per.items():
        n = sum(d["counts"].values())
        out.append(
            SaeRates(
                sae,
                n,
                d["counts"],
                {a: (d["counts"][a] / n if n else 0.0) for a in ANSWERS},
                {a: wilson(d["counts"][a], n) for a in ANSWERS},
                len(d["latents"]),
                len(d["raters"]),
            )
        )
    return out


def format_rates(rates: Sequence[SaeRates]) -> str:
    lines = [f"{'SAE':<28} {'n':>4}  " + "  ".join(f"{a:>22}" for a in ANSWERS)]
    for r in rates:
        cells = [f"{100 * r.rates[a]:5.1f}% [{100 * r.ci[a][0]:4.1f}, {100 * r.ci[a][1]:5.1f}]" for a in ANSWERS]
        lines.append(f"{r.sae:<28} {r.n:>4}  " + "  ".join(f"{c:>22}" for c in cells))
    lines.append(
        f"(rates over all ratings of all raters; 95% Wilson intervals; raters: "
        f"{max((r.n_raters for r in rates), default=0)})"
    )
    return "\n".join(lines)


def plot_rates(rates: Sequence[SaeRates], path: Path) -> Path:
    from .io import atomic_write_bytes
    from .viz.plots import figure_png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rates), 3.2))
    w = 0.8 / len(ANSWERS)
    colours = {"yes": "#2e7d32", "maybe": "#f9a825", "no": "#c62828"}
    for j, a in enumerate(ANSWERS):
        xs = [i + (j - 1) * w for i in range(len(rates))]
        ys = [100 * r.rates[a] for r in rates]
        err = [
            [max(0.0, 100 * (r.rates[a] - r.ci[a][0])) for r in rates],
            [max(0.0, 100 * (r.ci[a][1] - r.rates[a])) for r in rates],
        ]
        ax.bar(xs, ys, w, yerr=err, capsize=3, label=a.capitalize(), color=colours[a])
    ax.set_xticks(range(len(rates)), [f"{r.sae}\n(n={r.n})" for r in rates], fontsize=8)
    ax.set_ylabel("% of ratings")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Is the latent interpretable? (95% Wilson CI)", fontsize=9)
    fig.tight_layout()
    return atomic_write_bytes(path, figure_png(fig, dpi=120))


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def _dashboard_file(spec: str) -> Path:
    """The dashboard file an --sae entry stands for: the file, a folder holding one, or an SAE's own."""
    from .dashboard import DASHBOARD_FILES, find_dashboard

    p = Path(spec).expanduser()
    if p.is_file() and p.name.startswith("dashboard.json"):
        return p
    if p.is_dir() and any((p / n).is_file() for n in DASHBOARD_FILES):
        return next(p / n for n in DASHBOARD_FILES if (p / n).is_file())
    found = find_dashboard(spec)
    if found is None:
        raise GradsaeError(
            f"no dashboard for SAE {spec!r}: build one with gradsae dashboard --sae {spec} --out DIR "
            "and pass --sae DIR/dashboard.json"
        )
    return found


def _dashboard_for(spec: str):
    from .dashboard import load_dashboard

    return load_dashboard(_dashboard_file(spec), "--sae")


def page_id(saes: Sequence[str], seed: int, n: int, items: Sequence[tuple[str, int]]) -> str:
    return hashlib.sha256(json.dumps([list(saes), seed, n, list(items)]).encode()).hexdigest()[:12]


def build_rating(
    saes: Sequence[str],
    dashboards: Sequence,
    *,
    n_per_sae: int = 20,
    seed: int = 0,
    n_examples: int = 6,
    n_random: int = 2,
    min_contexts: int = 3,
) -> tuple[dict, list[dict]]:
    """Sample and shuffle the items. Returns (key, item views for the page, in page order)."""
    from .viz.dashboard_page import card_view

    if len(saes) < 2:
        raise GradsaeError("give at least two SAEs to compare: --sae A,B")
    if len(set(saes)) != len(saes):
        raise GradsaeError("the same SAE is given twice: give distinct SAEs")
    rng = random.Random(seed)
    chosen: list[tuple[str, int, object]] = []
    for sae, dash in zip(saes, dashboards):
        pool = [r.latent for r in dash.latents if len(r.top) >= min_contexts]
        if len(pool) < n_per_sae:
            raise GradsaeError(
                f"{sae}: only {len(pool)} latents have {min_contexts}+ top contexts: lower "
                "--n-per-sae or --min-contexts, or build the dashboard on more tokens"
            )
        chosen += [(sae, c, dash) for c in sorted(rng.sample(pool, n_per_sae))]
    rng.shuffle(chosen)
    pid = page_id(saes, seed, n_per_sae, [(s, c) for s, c, _ in chosen])
    key = {"schema": KEY_SCHEMA, "page": pid, "seed": seed, "saes": list(saes), "items": {}}
    views = []
    for i, (sae, c, dash) in enumerate(chosen, 1):
        item = f"item-{i:03d}"
        key["items"][item] = {"sae": sae, "latent": c}
        v = card_view(dash, dash.latent(c), n_top=n_examples, n_bands=n_random, n_influence=0)
        views.append(
            {
                "item": item,
                "n": i,
                "top": v["top"],
                "bands": v["bands"],
                "promoted": v["promoted"],
                "density": v["r"].density,
                "max_act": v["r"].max_act,
            }
        )
    return key, views


def render_rating_page(key: dict, views: Sequence[dict]) -> str:
    from .viz.html import asset, csp, environment as env, script_json

    js, css = asset("rate.js"), asset("dashboard.css")
    data = {"schema": RATINGS_SCHEMA, "page": key["page"], "items": [v["item"] for v in views]}
    return (
        env()
        .get_template("rate.html.j2")
        .render(items=views, csp=csp(js, css), js=js, css=css, data_json=script_json(data), page=key["page"])
    )


def key_path(page: str | Path) -> Path:
    p = Path(page)
    return p.with_name(p.stem + ".key.json")


def _read_json(path: str | Path, what: str) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GradsaeError(f"no {what} at {p}: check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise GradsaeError(f"{p}: not a JSON {what} ({type(e).__name__}): export it again") from None


def _check_key(key, key_file: str) -> None:
    """One line for a key file of the wrong shape."""
    if not isinstance(key, dict) or key.get("schema") != KEY_SCHEMA:
        raise GradsaeError(f"{key_file} is not a rating key ({KEY_SCHEMA}): pass the .key.json written with the page")
    saes, items = key.get("saes"), key.get("items")
    if not isinstance(key.get("page"), str) or not isinstance(saes, list) or not isinstance(items, dict):
        raise GradsaeError(
            f"{key_file} lacks its page, saes or items: it is damaged; use the key written with the page"
        )
    for item, v in items.items():
        if not (isinstance(v, dict) and v.get("sae") in saes and isinstance(v.get("latent"), int)):
            raise GradsaeError(
                f'{key_file}: item {item!r} is not {{"sae": one of the key\'s SAEs, "latent": a number}}: '
                "the key is damaged"
            )


def _check_ratings(r, f: str) -> None:
    """One line for an exported ratings file of the wrong shape or with an answer that is not Yes/Maybe/No."""
    if not isinstance(r, dict) or r.get("schema") != RATINGS_SCHEMA or not isinstance(r.get("ratings"), dict):
        raise GradsaeError(f"{f} is not an exported ratings file ({RATINGS_SCHEMA}): use the page's Export button")
    if r.get("rater") is not None and not isinstance(r["rater"], str):
        raise GradsaeError(f'{f}: "rater" is a {type(r["rater"]).__name__}, not a name')
    for item, ans in r["ratings"].items():
        if not isinstance(ans, dict):
            raise GradsaeError(f'{f}: item {item!r} is {ans!r}, not {{"answer": ..., "note": ...}}')
        a = ans.get("answer")
        if a is not None and (not isinstance(a, str) or a.strip().lower() not in ANSWERS):
            raise GradsaeError(f"{f}: item {item!r} has the answer {a!r}: use Yes, Maybe or No (or leave it empty)")


def load_scoring(key_file: str, rating_files: Sequence[str]) -> tuple[dict, list[dict]]:
    key = _read_json(key_file, "key file")
    _check_key(key, key_file)
    seen = [Path(f).resolve() for f in rating_files]
    twice = next((f for f, p in zip(rating_files, seen) if seen.count(p) > 1), None)
    if twice is not None:
        raise GradsaeError(f"{twice} is given twice: each rater's file counts once")
    ratings, raters = [], {}
    for f in rating_files:
        r = _read_json(f, "ratings file")
        _check_ratings(r, f)
        r = {**r, "rater": (r.get("rater") or "").strip() or Path(f).stem}  # an unnamed rater: the file's name
        if r["rater"] in raters:
            raise GradsaeError(
                f"{f} and {raters[r['rater']]} are both by rater {r['rater']!r}: give each rater's file once"
            )
        raters[r["rater"]] = f
        if r.get("page") != key["page"]:
            raise GradsaeError(
                f"{f} rates page {r.get('page')!r} but the key is for page {key['page']!r}: "
                "use the key written with that page"
            )
        unknown = set(r["ratings"]) - set(key["items"])
        if unknown:
            raise GradsaeError(f"{f} has items the key does not know ({sorted(unknown)[:3]}): wrong key file?")
        ratings.append(r)
    return key, ratings


def _refuse_overwrite(out: Path, key: dict) -> None:
    """Never replace a page gradsae did not write, nor the key of another page (its raters could not be
    unblinded any more); rewriting the same page (same SAEs, seed and sample) is fine."""
    if out.exists() and RATINGS_SCHEMA not in out.read_text(encoding="utf-8", errors="replace"):
        raise GradsaeError(f"{out} exists and is not a gradsae rating page: choose another --out")
    kp = key_path(out)
    if kp.exists():
        try:
            old = json.loads(kp.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or old.get("schema") != KEY_SCHEMA:
            raise GradsaeError(f"{kp} exists and is not a gradsae rating key: choose another --out")
        if old.get("page") != key["page"]:
            raise GradsaeError(
                f"{kp} is the key of another page ({old.get('page')}): its raters could not be unblinded if it were "
                "replaced; choose another --out"
            )


def run(cfg: RateConfig):
    from .io import atomic_write_text, output_lock, write_json

    if cfg.score:
        if not cfg.key:
            raise GradsaeError("--score needs --key: the .key.json written beside the page")
        key, ratings = load_scoring(cfg.key, cfg.score)
        rates = score_ratings(key, ratings)
        print(format_rates(rates))
        plot = Path(cfg.plot) if cfg.plot else Path(cfg.key).with_name("rates.png")
        plot_rates(rates, plot)
        print(f"wrote {plot}")
        return rates
    if cfg.n_per_sae < 1 or cfg.n_examples < 1 or cfg.n_random < 0:
        raise GradsaeError("--n-per-sae and --n-examples must be at least 1, --n-random 0 or more")
    files = [_dashboard_file(s).resolve() for s in cfg.sae]
    twice = next((s for s, f in zip(cfg.sae, files) if files.count(f) > 1), None)
    if twice is not None:
        raise GradsaeError(f"--sae names the dashboard of {twice} twice: a page compares different SAEs")
    dashboards = [_dashboard_for(s) for s in cfg.sae]
    key, views = build_rating(
        cfg.sae,
        dashboards,
        n_per_sae=cfg.n_per_sae,
        seed=cfg.seed,
        n_examples=cfg.n_examples,
        n_random=cfg.n_random,
        min_contexts=cfg.min_contexts,
    )
    out = Path(cfg.out)
    if out.is_dir() or not out.name:
        raise GradsaeError(f"--out {cfg.out!r} names a folder: give the page's file name, e.g. --out rate.html")
    with output_lock(out.parent if str(out.parent) else Path(".")):
        _refuse_overwrite(out, key)
        atomic_write_text(out, render_rating_page(key, views))
        write_json(key_path(out), key)
    print(
        f"wrote {out} ({len(views)} items from {len(cfg.sae)} SAEs, SAE hidden) and the key {key_path(out)} "
        "(keep it away from raters)"
    )
    return key
