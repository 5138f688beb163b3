"""The one HTML layer (html.py): escaping of page data, the CSP, how tokens are shown."""

import json

from gradsae.viz import html


def test_script_json_cannot_close_its_script_element_and_round_trips():
    obj = {"t": "</script><!-- \u2028 & <b>", "n": [1, 2.5]}
    s = html.script_json(obj)
    assert "</" not in s and "<!--" not in s and "\u2028" not in s and "&" not in s
    assert json.loads(s) == obj


def test_csp_allows_only_the_pages_own_script_and_no_network():
    c = html.csp("alert(1)", "body{}")
    assert c.startswith("default-src 'none'; script-src 'sha256-") and "unsafe" not in c
    assert html.csp_hash("body{}") in c
    assert "style-src 'unsafe-inline'" in html.csp("x")  # the report colours through style attributes


def test_tokens_show_breaks_tabs_and_never_reorder_the_text():
    assert html.token_text("a\nb\tc\r") == "a↵b⇥c"
    assert html.token_text("a\n", keep_breaks=True) == "a↵\n"
    shown = html.token_text("abc\u202edef\u2066")
    assert "\u202e" not in shown and "<U+202E>" in shown and "<U+2066>" in shown


def test_every_page_module_uses_the_one_environment():
    from gradsae.viz import report
    from gradsae.viz import dashboard_page as dashboard_html

    assert dashboard_html.env() is html.environment()
    assert report._macros() is not None and report.environment is html.environment


def test_no_page_shows_a_bidirectional_control_raw():
    from gradsae.viz.report import render_page

    page = render_page("title \u202eevil", "<p>body</p>", subtitle="sub \u2067x")
    assert "\u202e" not in page and "\u2067" not in page and "U+202E" in page


def test_json_never_holds_nan(tmp_path):
    import math

    from gradsae.io import read_json, write_json

    write_json(tmp_path / "x.json", {"a": math.nan, "b": [1.0, math.inf], "c": (2.0, -math.inf)})
    assert "NaN" not in (tmp_path / "x.json").read_text()
    assert read_json(tmp_path / "x.json") == {"a": None, "b": [1.0, None], "c": [2.0, None]}
