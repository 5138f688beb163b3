"""gradsae: gradient-aware interpretability of language models with sparse autoencoders.

Data flow: model -> splice -> influence -> squad (perturbation, steering, statistics) -> report
(see ARCHITECTURE.md). The names follow SAELens: ``SAE``, ``encode``, ``decode``, ``W_enc``, ``W_dec``.
"""
from .errors import GradsaeError
from .formats import bundled_saes, load_sae
from .generate import Batch, Generation, encode_prompts, greedy_generate
from .hooks import hook_name_for, parse_hook_name, resolve_layer
from .model import load_model
from .sae import SAE, SAEConfig
from .splice import LatentEdits, ResidualCapture, RowEdit, Splice

__version__ = "0.1.0"

__all__ = [
    "SAE", "SAEConfig", "GradsaeError", "load_model", "load_sae", "bundled_saes", "Splice", "RowEdit",
    "LatentEdits", "ResidualCapture", "greedy_generate", "encode_prompts", "Batch", "Generation",
    "hook_name_for", "parse_hook_name", "resolve_layer",
]
