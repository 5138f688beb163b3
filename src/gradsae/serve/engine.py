"""What ``gradsae serve`` computes, as a library: one model, several SAEs, and the questions the page asks.

``Explorer(model, tok, {name: sae}, dashboards)`` answers, each as a JSON-ready dict:

- ``rank``: the answer (given or the model's greedy one through the splice), every latent's GradSAE influence and
  activation (the paper's Baseline), the top of both rankings, the agreement between them, per-token influence of
  the listed latents.
- ``check``: for chosen latents, the target's exact change when the latent is zeroed at the scored positions,
  beside its first-order (grad x act) and second-order estimates and the reliability flag.
- ``intervene``: the default and the edited answers from one batch (row 0 unedited), for one edit or an alpha
  sweep, with the target's value on the explained answer under each edit.
- ``card``: a latent's dashboard card (from the SAE's dashboard, or one computed from the bundled sample corpus).

Every method takes ``progress(done, total, unit)``, which may raise to cancel. Nothing here knows about HTTP
(``app.py`` does); the CLI/Python line that reproduces a result comes with it (``reproduce``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import shlex
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import GradsaeError

EDIT_KINDS = ("zero", "clamp", "add")
EDIT_WHERE = ("all", "prompt", "generated")

Progress = Callable[[int, int, str], None]


def _quiet(done: int, total: int, unit: str) -> None:
    pass


@dataclass(frozen=True)
class Edit:
    """A latent edit: ``zero`` the latents, ``clamp`` them to ``value``, or ``add`` ``value`` to them (steering
    along ``value`` x W_dec[c]), at the ``prompt`` positions, the ``generated`` ones, or ``all``."""

    latents: tuple[int, ...]
    kind: str = "zero"
    value: float = 0.0
    where: str = "all"

    def __post_init__(self):
        if self.kind not in EDIT_KINDS:
            raise GradsaeError(f"unknown edit {self.kind!r}: use one of {', '.join(EDIT_KINDS)}")
        if self.where not in EDIT_WHERE:
            raise GradsaeError(f"unknown positions {self.where!r}: use one of {', '.join(EDIT_WHERE)}")
        if not self.latents:
            raise GradsaeError("no latents to edit: select at least one latent")

    def row(self, n_prompt: int, value: float | None = None):
        """The ``RowEdit`` for a sequence whose prompt has ``n_prompt`` tokens (no left padding)."""
        from ..splice import RowEdit

        v = self.value if value is None else float(value)
        start, until = (
            (n_prompt, None) if self.where == "generated" else (0, n_prompt if self.where == "prompt" else None)
        )
        lat = [int(c) for c in self.latents]
        if self.kind == "zero":
            return RowEdit(zero=lat, at=start, until=until)
        values = {c: v for c in lat}
        return (
            RowEdit(set=values, at=start, until=until)
            if self.kind == "clamp"
            else RowEdit(add=values, at=start, until=until)
        )


def rank_agreement(scores: torch.Tensor, baseline: torch.Tensor, k: int = 10) -> dict:
    """How far the GradSAE ranking and the activation ranking agree, over the latents that are active or scored.

    scores, baseline: [C]. Returns Spearman's rho (None for fewer than 3 such latents) and the overlap of the top
    ``k`` of both."""
    from scipy.stats import spearmanr

    from ..influence.rules import top_latents

    live = (scores != 0) | (baseline != 0)
    n = int(live.sum())
    rho = None
    if n >= 3:
        r = spearmanr(scores[live].double().numpy(), baseline[live].double().numpy()).statistic
        rho = None if r != r else round(float(r), 4)
    k = max(1, min(k, n)) if n else k
    a = {int(c) for c in top_latents(scores, k)}
    b = {int(c) for c in top_latents(baseline, k)}
    return {"spearman": rho, "latents": n, "k": k, "top_overlap": len(a & b)}


class Explorer:
    """One model, its tokenizer, the SAEs by name (and their dashboards, or None), generation settings."""

    def __init__(
        self,
        model,
        tok,
        saes: dict,
        dashboards: dict | None = None,
        *,
        max_new_tokens: int = 32,
        stop: Sequence[str] = ("\n",),
        model_spec: str = "smollm2",
        sample_tokens: int = 2048,
    ):
        if not saes:
            raise GradsaeError("no SAE given: pass at least one --sae")
        self.model, self.tok, self.saes = model, tok, dict(saes)
        self.dashboards = dict(dashboards or {})
        self.max_new_tokens, self.stop, self.model_spec = max_new_tokens, tuple(stop), model_spec
        self.sample_tokens = sample_tokens
        self._counting_lock = threading.Lock()

    @classmethod
    def load(cls, model: str = "smollm2", saes: Sequence[str] = ("smollm2/topk/L6",), device: str = "cpu", **kw):
        """Load a model and SAEs by spec (what the CLI's --model and --sae take), with their dashboards if found."""
        from ..dashboard import resolve_dashboard
        from ..model import load_model
        from ..saes import load_sae

        m, tok = load_model(model, device=device)
        dev = str(next(m.parameters()).device)
        return cls(
            m,
            tok,
            {s: load_sae(s, device=dev) for s in saes},
            {s: resolve_dashboard("", s) for s in saes},
            model_spec=model,
            **kw,
        )

    # -- checks ------------------------------------------------------------------------------------

    def sae(self, name: str):
        if name not in self.saes:
            raise GradsaeError(f"unknown SAE {name!r}: this server has {', '.join(self.saes)}")
        return self.saes[name]

    def check_text(self, prompt: str, output: str | None) -> None:
        from ..model import context_size

        if not prompt or not prompt.strip():
            raise GradsaeError("empty prompt: type the text the model should continue")
        if output is not None and output != "" and not output.strip():
            raise GradsaeError("the answer to explain is blank: type one, or leave it empty for the model's own")
        with self._counting_lock:
            n = len(self._counting_tok(prompt + (output or ""))["input_ids"])
        n += 0 if output else self.max_new_tokens
        limit = context_size(self.model)
        if limit and n > limit:
            raise GradsaeError(
                f"the prompt is too long: {n} tokens with the answer, the model's context is {limit}; shorten it"
            )

    @functools.cached_property
    def _counting_tok(self):
        """A copy of the tokenizer for the checks the server makes on its request threads: a fast tokenizer's
        padding state is changed by the model work, and one tokenizer used from two threads at once can fail."""
        return copy.deepcopy(self.tok)

    def check_latents(self, sae, latents: Sequence[int]) -> list[int]:
        bad = [int(c) for c in latents if not 0 <= int(c) < sae.d_sae]
        if bad:
            raise GradsaeError(f"unknown latent {bad[0]}: this SAE's latents are 0 to {sae.d_sae - 1}")
        return [int(c) for c in latents]

    # -- answers -----------------------------------------------------------------------------------

    def generate(self, prompt: str, sae_name: str, rows: Sequence, error: str, progress: Progress) -> list[str]:
        """Greedy answers of one prompt under each row's edit (None = unedited), one batch, KV cache on."""
        from ..generate import generate_edited

        gen = generate_edited(
            self.model,
            self.tok,
            self.sae(sae_name),
            [prompt] * len(rows),
            rows,
            error=error,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
            on_step=lambda d, t: progress(d, t, "tokens"),
            fix="sweep fewer alphas, or use a shorter prompt",
        )
        return gen.texts

    def answer(self, prompt: str, sae_name: str, error: str = "none", progress: Progress = _quiet) -> str:
        return self.generate(prompt, sae_name, [None], error, progress)[0]

    # -- the views ---------------------------------------------------------------------------------

    def rank(
        self, prompt: str, sae_name: str, output: str = "", opts=None, *, top: int = 20, progress: Progress = _quiet
    ) -> dict:
        """Both rankings of one answer (the view of ``gradsae explain``), their agreement, and the ranks of the
        Baseline's top latents under GradSAE."""
        from ..explain import explain
        from ..influence import InfluenceOptions
        from ..influence.rules import rank_of

        opts = (opts or InfluenceOptions()).influence_options()
        self.check_text(prompt, output or None)
        sae = self.sae(sae_name)
        if not output:
            output = self.answer(prompt, sae_name, opts.error, progress)
            if not output.strip():
                raise GradsaeError("the model's answer is empty: type an answer to explain, or change the prompt")
        progress(0, 1, "backward")
        inf, view = explain(
            self.model,
            self.tok,
            sae,
            prompt,
            output,
            opts,
            top=top,
            mask_k=(),
            keep_per_token=2 * top,
            max_new_tokens=self.max_new_tokens,
            stop=self.stop,
        )
        progress(1, 1, "backward")
        g_rank, a_rank = rank_of(inf.scores), rank_of(inf.baseline)
        for key in ("top", "bottom", "baseline_top"):
            for r in view[key]:
                r["gradsae_rank"] = int(g_rank[r["latent"]])
                r["activation_rank"] = int(a_rank[r["latent"]])
        view["agreement"] = rank_agreement(inf.scores, inf.baseline, k=min(top, 10))
        view["sae"] = sae_name
        view["d_sae"] = sae.d_sae
        view["options"] = dataclasses.asdict(opts)
        view["reproduce"] = self.reproduce_rank(prompt, output, sae_name, opts, top)
        return view

    def check(
        self, prompt: str, output: str, sae_name: str, latents: Sequence[int], opts=None, *, progress=_quiet
    ) -> dict:
        """Exact ablation beside the first- and second-order estimates for each latent (the target's change when
        the latent is zeroed at the scored positions)."""
        from ..influence import InfluenceOptions
        from ..influence.inputs import join_ids, pack
        from ..influence.reliability import exact_changes, reliability

        opts = (opts or InfluenceOptions()).influence_options()
        if not output or not output.strip():
            raise GradsaeError("no answer to check against: rank the prompt first")
        self.check_text(prompt, output)
        sae = self.sae(sae_name)
        lat = self.check_latents(sae, latents)
        if not lat:
            raise GradsaeError("no latents to check: select at least one")
        packed = pack(self.tok, [join_ids(self.tok, prompt, output)], sae.W_dec.device)
        kw = dict(target=opts.target, positions=opts.positions, error=opts.error)
        progress(0, 2, "passes")
        rel = reliability(self.model, sae, packed, **kw, latents=lat)
        progress(1, 2, "passes")
        exact = exact_changes(self.model, sae, packed, **kw, latents=lat).tolist()
        progress(2, 2, "passes")
        rows = []
        for c, e in zip(lat, exact):
            first, second = float(rel.first[c]), float(rel.corrected[c])
            rows.append(
                {
                    "latent": c,
                    "first_order": first,
                    "second_order": second,
                    "exact": e,
                    "flagged": bool(rel.flagged[c]),
                    "active": first != 0.0 or e != 0.0,
                    "relative_error": None if e == 0 else abs(first - e) / abs(e),
                }
            )
        return {
            "sae": sae_name,
            "target": opts.target,
            "scale": "the target's change when the latent is zeroed at the scored positions",
            "rows": rows,
            "reproduce": {
                "python": self._python(
                    sae_name, f"check = ex.check({prompt!r}, {output!r}, {sae_name!r}, {lat!r}, {self._opts(opts)})"
                )
            },
        }

    def intervene(
        self,
        prompt: str,
        sae_name: str,
        edit: Edit,
        output: str = "",
        *,
        alphas: Sequence[float] | None = None,
        opts=None,
        progress: Progress = _quiet,
    ) -> dict:
        """The unedited answer and the answer under ``edit`` (or under the edit with each value in ``alphas``)
        from one batch, and the target on ``output`` (the explained answer) under each."""
        from ..influence import InfluenceOptions
        from ..influence.inputs import forward_target, join_ids, pack
        from ..splice import Splice

        opts = (opts or InfluenceOptions()).influence_options()
        self.check_text(prompt, output or None)
        sae = self.sae(sae_name)
        self.check_latents(sae, edit.latents)
        values = [edit.value] if alphas is None else [float(a) for a in alphas]
        if not values:
            raise GradsaeError("no alpha values to sweep: give at least one")
        if any(v != v or v in (float("inf"), float("-inf")) for v in values):
            raise GradsaeError("an alpha or value is not a finite number: give numbers such as -4, 0.5, 8")
        n_prompt = len(self.tok(prompt, add_special_tokens=True)["input_ids"])
        rows = [None] + [edit.row(n_prompt, v) for v in values]
        texts = self.generate(prompt, sae_name, rows, opts.error, progress)
        target = None
        if output:
            packed = pack(self.tok, [join_ids(self.tok, prompt, output)], sae.W_dec.device)
            with torch.no_grad(), Splice(self.model, sae, error=opts.error, edits=rows) as s:
                target = forward_target(self.model, packed.repeat(len(rows)), opts.target, s).float().tolist()
        points = [
            {"value": v, "answer": texts[i + 1], **({"target": target[i + 1]} if target else {})}
            for i, v in enumerate(values)
        ]
        return {
            "sae": sae_name,
            "edit": dataclasses.asdict(edit),
            "default": {"answer": texts[0], **({"target": target[0]} if target else {})},
            "points": points,
            "target_name": opts.target if output else None,
            "explained": output,
            "reproduce": self.reproduce_intervene(prompt, sae_name, edit, output, alphas, opts),
        }

    def has_cards(self, sae_name: str) -> bool:
        """Whether ``card`` answers at once (a dashboard is loaded or was computed); otherwise it computes one."""
        return self.dashboards.get(sae_name) is not None

    def card(self, sae_name: str, latent: int, progress: Progress = _quiet) -> dict:
        """The latent's dashboard card (contexts, density, promoted tokens, decoder neighbours). Without a
        dashboard for the SAE, one is computed first from the bundled sample corpus (``sample_tokens`` tokens) and
        kept for the next cards; its ``source`` says so."""
        from ..dashboard import card_data

        sae = self.sae(sae_name)
        (c,) = self.check_latents(sae, [latent])
        dash = self.dashboards.get(sae_name)
        if dash is None:
            dash = self.dashboards[sae_name] = self.sample_dashboard(sae_name, progress)
        card = card_data(dash, c, n_contexts=5)
        if card is None:
            raise GradsaeError(f"latent {c} is not in the dashboard of {sae_name} (it covers {len(dash.latents)})")
        card["source"] = {"data": dash.meta.data, "tokens": dash.meta.n_tokens}
        card["reproduce"] = {"python": self._python(sae_name, f"card = ex.card({sae_name!r}, {c})")}
        return card

    def sample_dashboard(self, sae_name: str, progress: Progress = _quiet):
        """A dashboard of every latent from the first ``sample_tokens`` tokens of the bundled sample corpus."""
        import time

        from ..dashboard import DashboardConfig, build_state
        from ..dashboard.command import assemble
        from ..hooks import SPLICE_SITES
        from ..splice import check_compatible

        sae = self.sae(sae_name)
        cfg = DashboardConfig(
            sae=sae_name,
            data=["sample"],
            max_tokens=self.sample_tokens,
            context_length=64,
            batch_size=8,
            progress=False,
            device="cpu",
        )
        layer = check_compatible(self.model, sae, None, SPLICE_SITES)
        t0 = time.perf_counter()
        st = build_state(cfg, self.model, self.tok, sae, layer, on_batch=lambda d, t: progress(d, t, "tokens"))
        return assemble(
            cfg,
            st,
            self.model,
            self.tok,
            sae,
            layer,
            time.perf_counter() - t0,
            {"computed_by": "gradsae serve", "source": "the bundled sample corpus"},
        )

    # -- reproduce lines ---------------------------------------------------------------------------

    def _python(self, sae_name: str, call: str) -> str:
        """One line of Python: load what this server loaded, then ``call``."""
        return (
            "from gradsae.serve import Edit, Explorer; from gradsae.influence import InfluenceOptions; "
            f"ex = Explorer.load({self.model_spec!r}, [{sae_name!r}]); {call}"
        )

    @staticmethod
    def _opts(opts) -> str:
        return f"InfluenceOptions(**{dataclasses.asdict(opts)!r})"

    def reproduce_rank(self, prompt: str, output: str, sae_name: str, opts, top: int) -> dict:
        from ..influence import InfluenceOptions

        flags = [
            f"--{f.name.replace('_', '-')} {shlex.quote(str(getattr(opts, f.name)))}"
            for f in dataclasses.fields(InfluenceOptions)
            if getattr(opts, f.name) != getattr(InfluenceOptions(), f.name)
        ]
        cli = " ".join(
            [
                "gradsae explain",
                shlex.quote(prompt),
                "--output",
                shlex.quote(output),
                "--model",
                shlex.quote(self.model_spec),
                "--sae",
                shlex.quote(sae_name),
                f"--top {top}",
                *flags,
            ]
        )
        py = self._python(
            sae_name, f"view = ex.rank({prompt!r}, {sae_name!r}, {output!r}, {self._opts(opts)}, top={top})"
        )
        return {"cli": cli, "python": py}

    def reproduce_intervene(self, prompt, sae_name, edit: Edit, output, alphas, opts) -> dict:
        e = f"Edit(latents={tuple(edit.latents)!r}, kind={edit.kind!r}, value={edit.value!r}, where={edit.where!r})"
        a = None if alphas is None else [float(x) for x in alphas]
        call = f"res = ex.intervene({prompt!r}, {sae_name!r}, {e}, {output!r}, alphas={a!r}, opts={self._opts(opts)})"
        return {"python": self._python(sae_name, call)}
