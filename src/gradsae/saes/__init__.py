"""SAEs: the one ``SAE`` class, the registry of architectures, and one reader per file format.

- ``sae.py``: ``SAE``, ``SAEConfig`` (parameters and encode from the architecture registry); pure ``topk_code``,
  ``densify``
- ``architectures.py``: the registry of architectures (how each encodes and trains, how sae-lens runs it)
- ``formats.py``: the registry of file formats (detection in an explicit order), ``load_sae``, bundled names
- ``checks.py``: what the readers share (one-line errors for bad files and values, orientation by shape, building)
- one module per format, each registering itself: ``saelens.py`` (read and write, ``saelens:`` hub names),
  ``sparsify.py``, ``dictionary_learning.py``, ``gemma_scope.py``, ``gemma_scope_2.py``
"""

from . import architectures
from . import circuit_tracer, dictionary_learning, gemma_scope, gemma_scope_2, saelens, sparsify  # noqa: F401  (each registers its format)
from .formats import BUNDLED_DIR, DEFAULT_GSAE, DEFAULT_SAE, SAVE_DTYPES, bundled_saes, load_sae, resolve_path
from .sae import SAE, SAEConfig
from .saelens import fold_input_scaling, save_saelens

__all__ = [
    "SAE",
    "SAEConfig",
    "architectures",
    "load_sae",
    "save_saelens",
    "bundled_saes",
    "resolve_path",
    "fold_input_scaling",
    "BUNDLED_DIR",
    "DEFAULT_SAE",
    "DEFAULT_GSAE",
    "SAVE_DTYPES",
]
