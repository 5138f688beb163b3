"""How long the explorer page makes you wait: from pressing Enter to both rankings shown, and from pressing "Edit and
regenerate" to the edited answer shown, measured in a real browser (Playwright driving Chromium) against the real
server on the embedded defaults (bundled SmolLM2, the default SAE and its dashboard).

    PYTHONPATH=src python benchmarks/bench_serve.py --threads 2 --repeats 5 --screenshot docs/serve.png

Each repeat uses a different prompt (so nothing is cached between them); the first, which warms up torch, is
reported apart. Writes docs/results/serve_speed.json (machine, threads, each timing) and the screenshot.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from _common import REPO, table, write_out

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The author of Hamlet is",
    "The largest planet in the solar system is",
    "The chemical symbol for gold is",
    "The first man on the moon was",
    "The currency of Japan is the",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--screenshot", default=str(REPO / "docs" / "serve.png"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "serve_speed.json"))
    args = ap.parse_args()
    if args.repeats + 1 > len(PROMPTS):
        sys.exit(f"--repeats {args.repeats}: at most {len(PROMPTS) - 1}")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "tests"))
    from chromium import chromium
    from playwright.sync_api import sync_playwright
    from serving import serving

    from gradsae import load_model
    from gradsae.dashboard import resolve_dashboard
    from gradsae.saes import DEFAULT_SAE, load_sae
    from gradsae.serve import Explorer
    from gradsae.serve.app import create_app

    import tempfile

    model, tok = load_model("smollm2")
    ex = Explorer(model, tok, {DEFAULT_SAE: load_sae(DEFAULT_SAE)}, {DEFAULT_SAE: resolve_dashboard("", DEFAULT_SAE)})
    rows = []
    with tempfile.TemporaryDirectory() as sessions, serving(create_app(ex, sessions)) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(base + "/")
        for i, prompt in enumerate(PROMPTS[: args.repeats + 1]):
            page.fill("#prompt", prompt)
            t0 = time.perf_counter()
            page.press("#prompt", "Enter")
            page.wait_for_selector("#gradsae-table tr >> nth=1")  # visible: the page's CSP allows no eval'd predicate
            page.wait_for_selector("#baseline-table tr >> nth=1")
            t_rank = time.perf_counter() - t0
            page.locator("#gradsae-table input.pick").first.check()
            page.select_option("#edit-kind", "zero")
            page.select_option("#edit-where", "all")
            t0 = time.perf_counter()
            page.click("#intervene")
            page.wait_for_selector("#edited:not([hidden])")
            t_edit = time.perf_counter() - t0
            tokens = len(page.locator("#tokens .tok").all())
            rows.append({"prompt": prompt, "warmup": i == 0, "tokens": tokens, "rank_s": t_rank, "edit_s": t_edit})
        # the screenshot shows every view: a latent card and an alpha sweep too (not timed)
        page.locator("#gradsae-table button.latent").first.click()
        page.wait_for_selector("#card h2")
        page.select_option("#edit-kind", "add")
        page.fill("#alphas", "-40,-20,-10,0,10,20,40")
        page.click("#sweep")
        page.wait_for_selector("#sweep-out:not([hidden])")
        page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    timed = [r for r in rows if not r["warmup"]]
    print(table(rows, ["prompt", "warmup", "tokens", "rank_s", "edit_s"]))
    summary = {
        "rank_median_s": statistics.median(r["rank_s"] for r in timed),
        "edit_median_s": statistics.median(r["edit_s"] for r in timed),
    }
    print(
        f"\nmedian over {len(timed)} prompts: Enter -> both rankings {summary['rank_median_s']:.2f} s, "
        f"edit -> edited answer {summary['edit_median_s']:.2f} s"
    )
    write_out(
        args.out,
        {
            "what": "seconds from pressing Enter to both rankings shown, and from 'Edit and regenerate' (zero the top "
            "GradSAE latent at every position) to the edited answer shown; real browser, real server",
            "command": "PYTHONPATH=src python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
            "machine": {
                "cpu_threads": args.threads,
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "torch": torch.__version__,
            },
            "model": "smollm2 (bundled SmolLM2-135M-Instruct, float32)",
            "sae": DEFAULT_SAE,
            "rows": rows,
            **summary,
        },
    )
    print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
