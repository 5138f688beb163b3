"""``gradsae serve``: a local explorer for one model and its SAEs in the browser.

- ``engine.py``: ``Explorer`` (rank, check, intervene, card) and ``Edit``: the library behind the page.
- ``jobs.py``: model work on one worker thread, with progress and cancellation.
- ``app.py``: the FastAPI app (routes, validation, sessions); the page is ``viz/serve_page.py``.
- ``command.py``: ``ServeConfig`` and ``run`` (loads the model and SAEs, starts uvicorn on 127.0.0.1).
"""

from .engine import Edit, Explorer

__all__ = ["Edit", "Explorer"]
