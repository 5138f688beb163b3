"""``gradsae demo`` (the main job on embedded defaults), ``gradsae info`` and ``gradsae convert``."""
from __future__ import annotations

import platform
from dataclasses import dataclass

from .config import opt

SMOKE_CONTEXT = ("The lighthouse on Karvik Point was built in 1887 by the engineer Ada Lindqvist. "
                 "Its lamp was first lit with whale oil and later converted to electricity in 1931.")
SMOKE_QUESTIONS = [("Who built the lighthouse on Karvik Point?", "Ada Lindqvist"),
                   ("When was the lamp converted to electricity?", "1931")]


@dataclass
class DemoConfig:
    """Run the main job on the embedded defaults (bundled SmolLM2, bundled SAE, sample data)."""

    model: str = opt("smollm2", "model: 'smollm2', a local folder, a .gguf file or a hub id")
    sae: str = opt("", "SAE folder/file or bundled name (default: the bundled TopK SAE)")
    device: str = opt("cpu", "cpu, cuda, cuda:N or auto")
    out: str = opt("results/demo", "results folder")
    quick: bool = opt(False, "a one-minute look: fewer examples and K values")
    seed: int = opt(42, "random seed")


def run(cfg: DemoConfig) -> None:
    """Smoke run until the full demo lands: load the model, splice the SAE, answer sample questions."""
    from .formats import bundled_saes, load_sae
    from .generate import encode_prompts, greedy_generate
    from .model import load_model
    from .splice import Splice

    model, tok = load_model(cfg.model, device=cfg.device)
    name = cfg.sae or next(iter(bundled_saes()), "")
    if not name:
        print("no bundled SAE yet: answering through the plain model")
    prompts = [f"Context: {SMOKE_CONTEXT}\nQuestion: {q}\nAnswer:" for q, _ in SMOKE_QUESTIONS]
    batch = encode_prompts(tok, prompts, device=cfg.device)
    if name:
        sae = load_sae(name, device=cfg.device)
        with Splice(model, sae) as s:
            gen = greedy_generate(model, tok, batch, max_new_tokens=16, splice=s)
        print(f"SAE {name}: {sae.describe()}")
    else:
        gen = greedy_generate(model, tok, batch, max_new_tokens=16)
    for (q, gold), ans in zip(SMOKE_QUESTIONS, gen.texts):
        print(f"Q: {q}\n   model: {ans!r}   gold: {gold!r}")


@dataclass
class InfoConfig:
    """Show the bundled model and SAEs, the cache folder and library versions."""

    sae: str = opt("", "also describe this SAE")


def info(cfg: InfoConfig) -> None:
    import torch
    import transformers

    from .formats import bundled_saes, load_sae
    from .model import cache_dir

    print(f"gradsae on Python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"cache folder: {cache_dir()}")
    print("bundled SAEs:")
    for n in bundled_saes() or {"(none)": None}:
        print(f"  {n}")
    if cfg.sae:
        print(load_sae(cfg.sae).describe())


@dataclass
class ConvertConfig:
    """Read an SAE in any supported format and save it as a SAELens folder."""

    src: str = opt(help="source SAE (folder, file or bundled name)", positional=True)
    dst: str = opt(help="destination folder", positional=True)
    dtype: str = opt("", "save as this dtype (float32, float16, bfloat16); default keeps it")
    hook_name: str = opt("", "override the hook name, e.g. blocks.9.hook_resid_post")


def convert(cfg: ConvertConfig) -> None:
    from .formats import load_sae, save_saelens
    from .hooks import hook_name_for, parse_hook_name

    sae = load_sae(cfg.src)
    if cfg.hook_name:
        sae.cfg.hook_name = hook_name_for(parse_hook_name(cfg.hook_name))
    out = save_saelens(sae, cfg.dst, dtype=cfg.dtype or None)
    print(f"{sae.describe()} -> {out}")
