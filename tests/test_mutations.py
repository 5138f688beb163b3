"""Files another program or person wrote, mutated a few hundred ways each (fields deleted, values of another type
or out of range, at every depth; truncations; deep nesting): every reader gives a correct load or one line
(GradsaeError), never a traceback."""

import json

import pytest

from conftest import each_mutation as _each
from conftest import json_mutations, make_tiny
from gradsae.errors import GradsaeError


def test_activation_cache_manifest(tmp_path):
    from gradsae.training.cache import ActivationCache, CacheConfig, write_cache

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox {i}" for i in range(40)))
    model, tok = make_tiny("llama")
    out = write_cache(
        model,
        tok,
        CacheConfig(
            model="tiny",
            layers=[1],
            data=[str(corpus)],
            out=str(tmp_path / "k"),
            context_length=16,
            seqs_per_shard=4,
            batch_size=4,
            max_tokens=200,
            progress=False,
        ),
    )
    good = json.loads((out / "manifest.json").read_text())
    n, loads = _each(out / "manifest.json", good, lambda: ActivationCache(out).load(1, grads=True))
    assert n > 100 and loads > 0


def test_rating_key_and_exports(tmp_path):
    from gradsae.rate import KEY_SCHEMA, RATINGS_SCHEMA, load_scoring, score_ratings

    key = {
        "schema": KEY_SCHEMA,
        "page": "p1",
        "seed": 0,
        "saes": ["a", "b"],
        "items": {"i1": {"sae": "a", "latent": 3}, "i2": {"sae": "b", "latent": 5}},
    }
    ratings = {
        "schema": RATINGS_SCHEMA,
        "page": "p1",
        "rater": "ann",
        "ratings": {"i1": {"answer": "yes", "note": ""}, "i2": {"answer": "No", "note": "x"}},
    }
    kf, rf = tmp_path / "k.json", tmp_path / "r.json"
    kf.write_text(json.dumps(key))
    rf.write_text(json.dumps(ratings))

    def read():
        k, r = load_scoring(str(kf), [str(rf)])
        score_ratings(k, r)

    for path, good in ((kf, key), (rf, ratings)):
        n, loads = _each(path, good, read)
        assert n > 50 and loads > 0


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.update(ks=None),
        lambda s: s.update(methods=7),
        lambda s: s.pop("data", None),
        lambda s: s.update(perturbation={"n": "x"}),
        lambda s: s.update(tasks=[{"a": 1}]),
    ],
)
def test_an_edited_summary_json_is_one_line_for_the_report(tmp_path, edit):
    """`gradsae report` reads a results folder another run or person left (a whole report per case, so a few
    targeted edits rather than hundreds)."""
    from pathlib import Path

    from gradsae.viz.report import ReportConfig, run

    src = tmp_path / "src"
    src.mkdir()
    for f in (Path(__file__).parent / "data" / "results_v1").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    summary = json.loads((src / "summary.json").read_text())
    edit(summary)
    (src / "summary.json").write_text(json.dumps(summary))
    try:
        run(ReportConfig(folder=str(src)))
    except GradsaeError as e:
        assert "\n" not in str(e)


def test_summary_json_mutations_are_one_line_or_a_report():
    """summary.json's declared schema (squad.tables.SUMMARY_SCHEMA): every field of a real one deleted, nulled or
    given a value of another type, plus truncations and deep nesting, renders a report or is one line."""
    from gradsae.viz.report import render_report

    from pathlib import Path

    text = (Path(__file__).parent / "data" / "results_v1" / "summary.json").read_text()
    good = json.loads(text)
    cases = [(name, s) for name, s in json_mutations(good)]
    cases += [("deep", {**good, "data": json.loads("[" * 500 + "]" * 500)})]
    failures = []
    for name, s in cases:
        try:
            render_report(s, [], plots={})
        except GradsaeError as e:
            if "\n" in str(e):
                failures.append((name, str(e)))
        except Exception as e:  # noqa: BLE001 - the point: nothing but one line
            failures.append((name, f"{type(e).__name__}: {e}"))
    assert not failures, failures[:5]


def _small_dashboard() -> dict:
    """Two latents of a bundled dashboard, two contexts of each kind, the tokens they use."""
    import gzip

    from gradsae.saes import bundled_saes

    raw = gzip.decompress((bundled_saes()["smollm2/topk/L6"] / "dashboard.json.gz").read_bytes())
    obj = json.loads(raw)
    lats = [r for r in obj["latents"] if r["top"] and r["bands"] and r["influence"]][:2]
    for r in lats:
        for key in ("top", "bands", "influence", "promoted", "suppressed", "neighbours"):
            r[key] = r[key][:2]
        for c in r["influence"]:
            c["moved"] = c["moved"][:2]
    used = {i for r in lats for key in ("top", "bands", "influence") for c in r[key] for i in c["ids"]}
    used |= {t["id"] for r in lats for key in ("promoted", "suppressed") for t in r[key]}
    obj["tokens"] = {k: v for k, v in obj["tokens"].items() if int(k) in used}
    obj["latents"] = lats
    return obj


def test_dashboard_json_mutations_are_one_line_or_a_page():
    """dashboard.json's declared schema (dashboard.cards.DASHBOARD_SCHEMA and each context's consistency): every
    field of a real one, inside its lists too, deleted or given another type, loads and renders or is one line."""
    from gradsae.dashboard.cards import card_data, dashboard_from_json
    from gradsae.viz.dashboard_page import render_dashboard_page

    good = _small_dashboard()
    dash = dashboard_from_json(good)
    assert render_dashboard_page(dash) and card_data(dash, dash.latents[0].latent)
    free = lambda p: p[0] in ("tokens", "meta") and len(p) > 2  # noqa: E731 - token texts, the saved config
    cases = list(
        json_mutations(good, into_lists=True, values=[None, "x", -1, 1.5, 1e300, True, [], {}, [1, 2]], skip=free)
    )
    assert len(cases) > 1000
    failures = []
    for name, obj in cases:
        try:
            d = dashboard_from_json(obj)
            render_dashboard_page(d)
            for r in d.latents:
                card_data(d, r.latent)
        except GradsaeError as e:
            if "\n" in str(e):
                failures.append((name, str(e)))
        except Exception as e:  # noqa: BLE001 - the point: nothing but one line
            failures.append((name, f"{type(e).__name__}: {e}"))
    assert not failures, (len(failures), failures[:8])


def test_examples_jsonl_mutations_are_one_line_or_a_summary(tmp_path):
    """examples.jsonl's records are checked on read (squad.records.check_record): every field of a real answer,
    perturb and steer record deleted or given another type or an out-of-range score either reads and summarises
    or is one line."""
    from pathlib import Path

    from gradsae.squad.records import read_records
    from gradsae.squad.summary import summarize

    src = Path(__file__).parent / "data" / "results_v1"
    lines = (src / "examples.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    s = json.loads((src / "summary.json").read_text())
    meta = {k: s[k] for k in ("model", "sae", "layer", "d_sae", "ks", "methods", "sets")}
    meta.update(data=s["data"]["path"], min_f1=s["data"]["min_f1"], tasks=["perturb", "steer"])
    meta.update(steer_ks=s["steering"]["ks"], inject="activation", at="all", clamp=None)
    order = sorted({r["id"] for r in recs})
    summarize(read_records(src), order, meta)  # the real folder summarises
    failures, n = [], 0
    for task in ("answer", "perturb", "steer"):
        i = next(j for j, r in enumerate(recs) if r["task"] == task)
        for name, d in json_mutations(recs[i]):
            n += 1
            (tmp_path / "examples.jsonl").write_text("\n".join(lines[:i] + [json.dumps(d)] + lines[i + 1 :]) + "\n")
            try:
                summarize(read_records(tmp_path), order, meta)
            except GradsaeError as e:
                if "\n" in str(e):
                    failures.append((task, name, str(e)))
            except Exception as e:  # noqa: BLE001 - the point: nothing but one line
                failures.append((task, name, f"{type(e).__name__}: {e}"))
    assert n > 1000 and not failures, (len(failures), failures[:6])


def test_results_config_json(tmp_path):
    """A results folder's config.json as a resume (check_config), --answers-from (import_answers) and merge
    (_shard_config) read it."""
    import dataclasses

    from gradsae.squad.config import ExperimentConfig, fingerprint
    from gradsae.squad.merge import _shard_config
    from gradsae.squad.run import check_config, import_answers

    folder, other = tmp_path / "r", tmp_path / "o"
    folder.mkdir()
    other.mkdir()
    cfg = ExperimentConfig(shard="1/2", out=str(folder))
    extra = {"stop_resolved": ["\n"], "extract_resolved": "first-line", "data_sha256": "ab" * 32}
    good = {"commands": ["experiment"], "config": dataclasses.asdict(cfg), "fingerprint": fingerprint(cfg, **extra)}

    def read():
        check_config(folder, cfg, "experiment", extra)
        import_answers(folder, other, good["fingerprint"], cfg.ks, [])
        _shard_config(folder)

    n, loads = _each(folder / "config.json", good, read)
    assert n > 300 and loads > 0


def test_training_checkpoint_metadata(tmp_path):
    """The JSON a training checkpoint carries (step, token counts, norms, corpus position, config) as a resume
    reads it: TrainState.load, then the corpus reader's restore."""
    import torch
    from safetensors.torch import load_file, save_file

    from conftest import make_tiny
    from gradsae.saes import SAE, SAEConfig
    from gradsae.training.state import DeadLatents, TrainState
    from gradsae.training.stream import RowReader

    def grid():
        saes = [SAE.init_random(SAEConfig(d_in=8, d_sae=16, architecture="topk", k=2), seed=j) for j in range(2)]
        opts = [torch.optim.Adam(s.parameters()) for s in saes]
        return saes, opts

    saes, opts = grid()
    for s, o in zip(saes, opts):
        s.W_dec.sum().backward()
        o.step()
    state = TrainState(
        step=4,
        tokens=512,
        sae_tokens=512,
        norm={"1": 2.5},
        grad_rms=[0.0, 0.1],
        grad_ema_n=[0, 3],
        reader={"epoch": 0, "docs": 3},
        dead=[DeadLatents.fresh(16) for _ in saes],
        config={"lr": 1e-3},
    )
    ckpt = tmp_path / "checkpoint.safetensors"
    state.save(ckpt, saes, opts)
    tensors = load_file(ckpt)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"doc {i}" for i in range(10)))
    _, tok = make_tiny("llama")
    meta_file = tmp_path / "meta.json"

    def read():
        meta = {"gradsae_train_state": meta_file.read_text(errors="replace"), "version": "1"}
        save_file(tensors, ckpt, metadata=meta)
        got = TrainState.load(ckpt, *grid())
        RowReader([str(corpus)], "text", tok, 8, True).restore(got.reader, got.reader_pending)

    n, loads = _each(
        meta_file,
        json.loads(json.dumps({k: v for k, v in vars(state).items() if k not in ("dead", "reader_pending")})),
        read,
    )
    assert n > 200 and loads > 0


def test_dashboard_state_metadata(tmp_path):
    """The JSON a dashboard's resumable state carries (sizes, counts, the settings' fingerprint)."""
    from safetensors.torch import load_file, save_file

    from gradsae.dashboard.state import DashboardState

    path = tmp_path / "state.safetensors"
    DashboardState.new(16, 4, 4, 4, 3, 2).save(path, "fp1")
    tensors = load_file(path)
    good = {"d_sae": 16, "n_tokens": 0, "n_influence_tokens": 0, "rows_done": 0, "fingerprint": "fp1"}
    meta_file = tmp_path / "meta.json"

    def read():
        save_file(tensors, path, metadata={"state": meta_file.read_text(errors="replace")})
        DashboardState.load(path, "fp1")

    n, loads = _each(meta_file, good, read)
    assert n > 50 and loads > 0
