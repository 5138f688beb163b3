"""What people look at: the one HTML layer and every page built on it, and the one matplotlib setup.

- ``html.py``: the Jinja2 environment (autoescape), assets, ``script_json``, the Content-Security-Policy, ``token_text``
- ``report.py``: the experiment report and the explain page
- ``dashboard_page.py``: the dashboard page and latent cards (a fragment other pages embed)
- ``plots.py``: ``pyplot`` / ``figure_png`` (every figure) and the report's K curves
- ``templates/``: the markup, style and scripts of every page (the rating page's too)
"""
