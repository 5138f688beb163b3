"""KV caches across transformers versions, in one place.

transformers 5.2x renamed the forward keyword and the output field ``past_key_values`` to ``cache`` (the old
name warns and is removed in 5.40); older releases know only ``past_key_values``. Every forward pass that passes
or reads a cache goes through these helpers, which ask the model's own signature and output class which name
they use, so the same code runs on every release pyproject allows without a deprecation warning.
"""

from __future__ import annotations

import functools
import inspect


@functools.lru_cache(maxsize=None)
def _cache_keyword(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{keyword: cache}`` for ``model(...)``: ``cache`` where the model takes it, else ``past_key_values``."""
    return {_cache_keyword(type(model)): cache}


def _field(out) -> str:
    return "cache" if "cache" in getattr(out, "__dataclass_fields__", {}) else "past_key_values"


def returned_cache(out):
    """The KV cache a forward pass returned (``out.cache`` or ``out.past_key_values``, whichever it has)."""
    return getattr(out, _field(out))


def set_returned_cache(out, cache) -> None:
    """Replace the KV cache held by a model output (under the name its class uses)."""
    setattr(out, _field(out), cache)


def new_cache(model):
    """An empty ``DynamicCache`` for ``model`` (``config=`` where the release takes it)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()
