"""The ``gradsae serve`` page: one template, its stylesheet and script (``templates/serve.*``), the server's info
as JSON in the page, and the CSP that allows only that script and style and calls to the page's own server."""

from __future__ import annotations

from .html import asset, csp, environment, script_json


def render_page(info: dict) -> tuple[str, str]:
    """(HTML, Content-Security-Policy header) of the explorer page for a server described by ``info``. The header
    adds ``frame-ancestors 'none'`` (no other site may frame the page), which a ``<meta>`` policy cannot carry."""
    js, css = asset("serve.js"), asset("serve.css")
    policy = csp(js, css, connect_self=True)
    html = (
        environment()
        .get_template("serve.html.j2")
        .render(csp=policy, js=js, css=css, info=info, info_json=script_json(info))
    )
    return html, policy + "; frame-ancestors 'none'"
