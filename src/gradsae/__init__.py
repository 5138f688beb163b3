"""gradsae: gradient-aware interpretability of language models with sparse autoencoders.

Data flow: model -> splice -> influence -> squad (perturbation, steering, statistics) -> report
(see ARCHITECTURE.md). The names follow SAELens: ``SAE``, ``encode``, ``decode``, ``W_enc``, ``W_dec``.
"""

from .errors import GradsaeError

__version__ = "0.1.0"

# The rest is imported on first use (PEP 562), so `import gradsae.cli` stays light: the CLI starts at once and
# a Ctrl-C in the first second is answered by the CLI's own handler, not a traceback from inside torch.
_LAZY = {
    "SAE": "saes",
    "SAEConfig": "saes",
    "load_model": "model",
    "load_sae": "saes",
    "bundled_saes": "saes",
    "Splice": "splice",
    "RowEdit": "splice",
    "LatentEdits": "splice",
    "ResidualCapture": "capture",
    "greedy_generate": "generate",
    "encode_prompts": "generate",
    "Batch": "generate",
    "Generation": "generate",
    "hook_name_for": "hooks",
    "parse_hook_name": "hooks",
    "resolve_layer": "hooks",
}

__all__ = [
    "SAE",
    "SAEConfig",
    "GradsaeError",
    "load_model",
    "load_sae",
    "bundled_saes",
    "Splice",
    "RowEdit",
    "LatentEdits",
    "ResidualCapture",
    "greedy_generate",
    "encode_prompts",
    "Batch",
    "Generation",
    "hook_name_for",
    "parse_hook_name",
    "resolve_layer",
]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'gradsae' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
