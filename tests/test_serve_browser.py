"""gradsae serve in a real browser (Playwright driving the Debian Chromium), on the embedded defaults: the bundled
SmolLM2, the default SAE and its bundled dashboard. One page visit goes through every view."""

from __future__ import annotations

import os

import pytest

from chromium import browser
from serving import serving

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def base(smollm2, tmp_path_factory):
    from gradsae.dashboard import resolve_dashboard
    from gradsae.saes import DEFAULT_SAE, load_sae
    from gradsae.serve import Explorer
    from gradsae.serve.app import create_app

    model, tok = smollm2
    other = "smollm2/topk/L14"  # served without its dashboard: its cards are computed from the sample corpus
    ex = Explorer(
        model,
        tok,
        {DEFAULT_SAE: load_sae(DEFAULT_SAE), other: load_sae(other)},
        {DEFAULT_SAE: resolve_dashboard("", DEFAULT_SAE), other: None},
        sample_tokens=1024,
    )
    with serving(create_app(ex, tmp_path_factory.mktemp("sessions"))) as url:
        yield url


@pytest.fixture
def page(base):
    with browser(1280, 1000) as pg:
        pg.goto(base + "/")
        yield pg


def rank(page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    page.wait_for_selector("#gradsae-table tr >> nth=1")
    page.wait_for_selector("#baseline-table tr >> nth=1")


def finish(page, button: str) -> None:
    """Click a button that queues a job and wait until that job has finished (the page counts finished jobs)."""
    done = int(page.get_attribute("body", "data-jobs") or 0)
    page.click(button)
    page.wait_for_selector(f'body[data-jobs="{done + 1}"]', state="attached", timeout=120_000)


def rows(page, table: str) -> int:
    return page.locator(f"{table} tr").count()


def test_every_view_in_a_real_browser(page, tmp_path):
    from playwright.sync_api import expect

    rank(page, "The capital of France is")
    answer = page.text_content("#answer")
    assert answer.strip()
    assert rows(page, "#gradsae-table") == 21 and rows(page, "#baseline-table") == 21  # header + top 20 each
    expect(page.locator("#agreement")).to_contain_text("Spearman")
    assert page.locator("#tokens .tok").count() >= 6
    coloured = page.eval_on_selector_all("#tokens .tok", "els => els.filter(e => e.style.backgroundColor).length")
    assert coloured > 0
    assert page.text_content("#repro-rank-cli").startswith("gradsae explain ")

    # the latent card, and a decoder neighbour's card from it
    first = page.locator("#gradsae-table button.latent").first
    latent = first.text_content()
    first.click()
    expect(page.locator("#card h2")).to_contain_text(f"Latent {latent}")
    assert page.locator("#card p.ctx").count() > 0
    neighbour = page.locator("#card button.neighbour").first
    n = neighbour.text_content()
    neighbour.click()
    expect(page.locator("#card h2")).to_contain_text(f"Latent {n}")

    # check the number: exact ablation beside grad x act
    page.locator("#gradsae-table input.pick").first.check()
    expect(page.locator("#selected")).to_have_text(latent)
    page.click("#check")
    page.wait_for_selector("#check-table tr >> nth=1")
    cells = page.locator("#check-table tr").nth(1).locator("td").all_text_contents()
    assert cells[0] == latent and cells[3] not in ("", "–")

    # intervene: ablate the top latent at every position ("Paris." becomes another answer), then clamp it high
    page.select_option("#edit-kind", "zero")
    page.select_option("#edit-where", "all")
    page.click("#intervene")
    page.wait_for_selector("#edited:not([hidden])")
    assert page.text_content("#default-answer") == answer
    ablated = page.text_content("#edited-answer")
    assert ablated != answer, ablated
    assert "Edit(latents=" in page.text_content("#repro-edit-py")
    page.select_option("#edit-kind", "clamp")
    page.fill("#edit-value", "30")
    finish(page, "#intervene")
    assert page.locator("#error").is_hidden()
    assert "kind='clamp', value=30.0" in page.text_content("#repro-edit-py")
    clamped = page.text_content("#edited-answer")
    assert clamped not in (answer, ablated), (answer, ablated, clamped)

    # an alpha sweep: the plot and one table row per alpha (+ header and default)
    page.select_option("#edit-kind", "add")
    page.fill("#alphas", "-40, 0, 40")
    page.click("#sweep")
    page.wait_for_selector("#sweep-out:not([hidden])")
    assert rows(page, "#sweep-table") == 5
    points = page.get_attribute("#sweep-plot polyline", "points")
    assert len(points.split()) == 3
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("GRADSAE_SERVE_SCREENSHOT"):  # benchmarks/bench_serve.py keeps the one for the docs
        page.screenshot(path=os.environ["GRADSAE_SERVE_SCREENSHOT"], full_page=True)

    # save, reload, reopen: the rankings and answers come back without recomputing
    page.fill("#session-name", "browser-1")
    page.click("#save")
    expect(page.locator("#status-text")).to_contain_text("saved session browser-1")
    page.reload()
    assert page.locator("#result").is_hidden()
    page.select_option("#session-list", "browser-1")
    page.click("#open")
    expect(page.locator("#answer")).to_have_text(answer)
    assert rows(page, "#gradsae-table") == 21 and rows(page, "#sweep-table") == 5
    assert page.text_content("#edited-answer") != answer
    assert page.input_value("#prompt") == "The capital of France is"
    assert not page.problems, page.problems


def test_bad_input_and_an_xss_prompt(page):
    from playwright.sync_api import expect

    page.fill("#prompt", "   ")
    page.click("#rank")
    expect(page.locator("#error")).to_contain_text("empty prompt")

    payload = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
    rank(page, payload + " The capital of France is")
    assert page.evaluate("window.__xss") is None
    assert page.locator("#tokens img, #tokens script, #result img").count() == 0
    assert "<img" in page.text_content("#tokens")
    expect(page.locator("#error")).to_be_hidden()

    page.locator("#gradsae-table input.pick").first.check()
    page.fill("#edit-value", "abc")
    page.click("#intervene")
    expect(page.locator("#error")).to_contain_text("is not a number")
    page.fill("#alphas", "1, two")
    page.click("#sweep")
    expect(page.locator("#error")).to_contain_text("is not a number")

    # a latent named by number: selected, or refused in one line when it is not one of this SAE's
    page.click("#clear-selection")
    expect(page.locator("#selected")).to_have_text("none")
    page.fill("#latent-no", "77")
    page.click("#select-latent")
    expect(page.locator("#selected")).to_have_text("77")
    page.fill("#latent-no", "4096")
    page.click("#card-latent")
    expect(page.locator("#error")).to_contain_text("unknown latent 4096: this SAE's latents are 0 to 4095")
    # the empty prompt was refused by the server (HTTP 400, which the browser logs); nothing else went wrong
    assert [p for p in page.problems if "status of 400" not in p] == [], page.problems


def test_a_card_without_a_dashboard_is_computed_with_progress(page):
    from playwright.sync_api import expect

    page.select_option("#sae", "smollm2/topk/L14")
    rank(page, "The capital of France is")
    first = page.locator("#gradsae-table button.latent").first
    latent = first.text_content()
    first.click()
    expect(page.locator("#card h2")).to_contain_text(f"Latent {latent} (smollm2/topk/L14)", timeout=180_000)
    expect(page.locator("#card")).to_contain_text("tokens of sample")
    assert "latent card" in page.text_content("#status-text")
    assert not page.problems, page.problems


def test_the_command_serves_the_defaults_and_stops_cleanly_on_ctrl_c(tmp_path):
    """`gradsae serve` with no model or SAE arguments, as a user starts it; Ctrl-C ends it without a traceback."""
    import signal
    import subprocess
    import sys
    import time

    from serving import call, free_port

    port = free_port()
    cmd = [sys.executable, "-m", "gradsae", "serve", "--port", str(port), "--sessions", str(tmp_path / "s")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base, info = f"http://127.0.0.1:{port}", None
        for _ in range(3000):  # up to ~5 minutes: a fresh machine converts the bundled GGUF once
            if proc.poll() is not None:
                break
            try:
                code, info = call(base, "GET", "/api/info")
                break
            except OSError:
                time.sleep(0.1)
        assert info is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert code == 200 and info["saes"][0] == {
            "name": "smollm2/topk/L6",
            "d_sae": 4096,
            "hook": "blocks.6.hook_resid_post",
            "dashboard": True,
        }
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "Traceback" not in out and proc.returncode == 0, (proc.returncode, out)
    assert f"open http://127.0.0.1:{port}/" in out and "warning" not in out
