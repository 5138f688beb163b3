"""Streaming trainer: corpus -> model -> a grid of SAEs, on the tiny models of every architecture.

Checks the data path against direct computations (multi-layer capture, the early stop, the shuffle
buffer, the resumable reader), E2E pieces against references, exact resume (in process and after
kill -9 of a subprocess), the log without repeats, and one-line errors for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ARCHS, make_tiny
from gradsae import load_sae
from gradsae.errors import GradsaeError
from gradsae.hooks import decoder_layers
from gradsae.training.e2e import kl_per_position, tail_logits
from gradsae.training.state import DeadLatents
from gradsae.capture import capture
from gradsae.training.stream import RowReader
from gradsae.training.train import TrainConfig, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _corpus(path, n=200):
    path.write_text(
        "\n".join(f"doc {i}: the quick brown fox {i * 13} jumps over the lazy dog number {i}" for i in range(n))
    )
    return path


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Each tiny model saved as a Hugging Face folder (what `--model DIR` loads), plus a corpus."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for arch in ARCHS:
        model, tok = make_tiny(arch)
        model.save_pretrained(root / arch)
        tok.save_pretrained(root / arch)
        out[arch] = root / arch
    return out, _corpus(root / "corpus.txt")


def _cfg(model_dir, corpus, out, **kw):
    base = dict(
        model=str(model_dir),
        data=[str(corpus)],
        out=str(out),
        layers=[0, 2],
        architectures=["topk", "gsae"],
        k=[4],
        d_sae=[32],
        batch_size=4,
        context_length=16,
        max_tokens=4 * 16 * 16,
        shuffle_batches=4,
        device="cpu",
        threads=1,
        log_every=2,
        checkpoint_every=4,
        warmup_steps=2,
        progress=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(folder):
    return {p.relative_to(folder).as_posix(): load_sae(p.parent).state_dict() for p in sorted(folder.rglob("cfg.json"))}


def _assert_identical(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and wa
    for name in wa:
        for key, t in wa[name].items():
            assert torch.equal(t, wb[name][key]), (name, key)


# ---- the data path ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_capture_matches_hidden_states_and_gradients(arch):
    model, tok = make_tiny(arch)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    acts, grads = capture(model, ids, [0, 1], grad=True)
    hs = model(input_ids=ids, output_hidden_states=True).hidden_states  # [-1] is after the final norm
    for l in (0, 1):
        torch.testing.assert_close(acts[l], hs[l + 1], rtol=1e-5, atol=1e-5)
    # dL/dx at block 0 from a direct backward (L = summed next-token CE)
    emb = model.get_input_embeddings()(ids)
    z = {}

    def hook(m, a, o):
        h = (o if isinstance(o, torch.Tensor) else o[0]).detach().requires_grad_(True)
        z["h"] = h
        return h if isinstance(o, torch.Tensor) else (h, *o[1:])

    handle = decoder_layers(model)[0].register_forward_hook(hook)
    with torch.enable_grad():
        logits = model(input_ids=ids).logits
        torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"
        ).backward()
    handle.remove()
    torch.testing.assert_close(grads[0], z["h"].grad, rtol=1e-4, atol=1e-6)
    assert emb.shape[-1] == acts[0].shape[-1]


def test_forward_stops_after_the_highest_layer_without_gradients():
    model, tok = make_tiny("llama")
    calls = []
    last = decoder_layers(model)[2]
    h = last.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(0, 256, (2, 8))
    capture(model, ids, [0, 1], grad=False)
    assert calls == []  # block 2 never ran
    capture(model, ids, [0, 1], grad=True)  # a gradient needs the loss, so the whole model runs
    assert calls == [1]
    h.remove()


def test_row_reader_resumes_and_cycles(tmp_path):
    _, tok = make_tiny("llama")
    corpus = _corpus(tmp_path / "c.txt", n=30)
    r = RowReader([str(corpus)], "text", tok, 16, True, chunk_docs=4)
    first = r.rows(5)
    assert first.shape == (5, 16) and (first[:, 0] == tok.bos_token_id).all()
    state, pending = r.state()
    rest = r.rows(300)  # more than the corpus: cycles into the next epoch
    assert r.epoch >= 1
    r2 = RowReader([str(corpus)], "text", tok, 16, True, chunk_docs=4)
    r2.restore(state, pending)
    assert np.array_equal(r2.rows(300), rest)
    # the same rows as the corpus module's packing
    from gradsae.corpus import iter_documents, iter_token_rows

    ref = np.stack(list(iter_token_rows(iter_documents([str(corpus)]), tok, 16, True)))
    assert np.array_equal(np.concatenate([first, rest])[: len(ref)], ref)


def test_shuffle_buffer_is_a_seeded_permutation_of_the_fill(saved_models, tmp_path):
    from gradsae import load_model
    from gradsae.training.stream import CorpusSource

    models, corpus = saved_models
    model, tok = load_model(str(models["llama"]))

    def source(seed):
        reader = RowReader([str(corpus)], "text", tok, 16, True)
        return CorpusSource(model, reader, [1], [], [], 4, 3, 1, seed, 0, 1, "cpu", "float32")

    steps = source(0).fill(0, 3)
    x = torch.cat([s.tokens[1].x for s in steps])
    reader = RowReader([str(corpus)], "text", tok, 16, True)
    ref = torch.cat(
        [capture(model, torch.from_numpy(reader.rows(4)), [1], False)[0][1][:, 1:].reshape(-1, 64) for _ in range(3)]
    )
    assert x.shape == ref.shape == (3 * 4 * 15, 64)
    assert not torch.equal(x, ref)  # mixed ...

    def order(t):
        return t[torch.argsort(t[:, 0])]

    torch.testing.assert_close(order(x), order(ref), rtol=0, atol=0)  # ... but the same tokens
    assert torch.equal(torch.cat([s.tokens[1].x for s in source(0).fill(0, 3)]), x)  # seeded
    assert not torch.equal(torch.cat([s.tokens[1].x for s in source(1).fill(0, 3)]), x)


def test_dead_latent_rules():
    d = DeadLatents.fresh(4)
    for t in range(1, 7):  # latent 0 fires every batch, latent 1 only in batch 1, 2 never, 3 in batch 6
        d.update(torch.tensor([1, int(t == 1), 0, int(t == 6)]), t * 100)
    assert d.dead_by_batches(5).tolist() == [False, True, True, False]
    assert d.dead_by_tokens(600, 450).tolist() == [False, True, True, False]
    assert d.dead_by_tokens(600, 1000).tolist() == [False] * 4  # nothing is dead before the window


# ---- E2E pieces ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_tail_from_clean_activation_gives_the_model_output(arch):
    model, tok = make_tiny(arch)
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    acts, _ = capture(model, ids, [1], grad=False)
    full = model(input_ids=ids).logits
    torch.testing.assert_close(tail_logits(model, 1, ids, acts[1]), full, rtol=1e-5, atol=1e-5)
    lp = full.log_softmax(-1)
    assert kl_per_position(lp, full).abs().max() < 1e-5
    assert (kl_per_position(lp, full + torch.randn_like(full)) > 0).all()


def test_torch_adam_follows_the_hand_written_trajectory():
    """The trainer uses torch.optim.Adam; it matches the plain Adam formula it replaced."""
    g = torch.Generator().manual_seed(0)
    p1 = torch.randn(20, 8, generator=g)
    p2 = p1.clone().requires_grad_(True)
    opt = torch.optim.Adam([p2], lr=1e-2, betas=(0.9, 0.999), eps=6.25e-10)
    m, v = torch.zeros_like(p1), torch.zeros_like(p1)
    for t in range(1, 101):  # the gradient depends on the parameters, so the trajectories must agree
        noise = 0.1 * torch.randn(20, 8, generator=g)
        grad = torch.sin(p1 * t) + noise
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad * grad
        p1 = p1 - 1e-2 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 6.25e-10)
        p2.grad = torch.sin(p2.detach() * t) + noise
        opt.step()
    torch.testing.assert_close(p2.detach(), p1, rtol=1e-5, atol=1e-5)


# ---- whole runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_grid_of_every_architecture_trains_on_every_model(saved_models, tmp_path, arch):
    models, corpus = saved_models
    out = run(_cfg(models[arch], corpus, tmp_path / "run", architectures=["topk", "gsae", "e2e"], beta=[0.5, 1]))
    names = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("cfg.json"))
    assert names == [f"L{l}/{n}" for l in (0, 2) for n in ("e2e_k4", "gsae_k4_b0.5", "gsae_k4_b1", "topk_k4")]
    e2e = load_sae(out / "L2" / "e2e_k4")
    assert e2e.cfg.architecture == "e2e" and e2e.cfg.k == 4 and e2e.hook_name == "blocks.2.hook_resid_post"
    assert e2e.encode(torch.randn(3, 64)).count_nonzero(-1).le(4).all()  # TopK at inference
    meta = e2e.cfg.metadata
    assert {"dead_frac_train", "dead_frac_train_5batches", "tokens_seen"} <= set(meta)
    assert meta["tokens_seen"] == 16 * 4 * 15  # 16 steps x 4 rows x (16 - 1 dropped position)
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(2, 17, 2))
    assert "kl" in log[-1]["L2/e2e_k4"] and log[-1]["L0/topk_k4"]["l0"] == 4.0


def test_resume_in_process_is_bit_identical_and_log_has_no_repeats(saved_models, tmp_path):
    models, corpus = saved_models
    kw = dict(architectures=["topk", "gsae", "e2e"], checkpoint_every=1)
    ref = run(_cfg(models["qwen2"], corpus, tmp_path / "a", **kw))
    part = tmp_path / "b"
    run(_cfg(models["qwen2"], corpus, part, max_steps=5, **kw))  # stops at the fill boundary after step 5: 8
    assert not (part / "L0" / "topk_k4").exists()
    # a kill after more steps were logged than checkpointed: append a fake later record
    with open(part / "train_log.jsonl", "a") as f:
        f.write(json.dumps({"step": 10}) + "\n")
    (part / ".checkpoint.safetensors.x.tmp").write_bytes(b"half")  # a temp file a kill left behind
    run(_cfg(models["qwen2"], corpus, part, **kw))
    _assert_identical(ref, part)
    steps = [json.loads(l)["step"] for l in (part / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 17, 2))
    assert not list(part.glob(".*.tmp"))


def test_kill_9_during_a_run_then_rerun_is_bit_identical(saved_models, tmp_path):
    models, corpus = saved_models
    args = [
        "--model",
        str(models["llama"]),
        "--data",
        str(corpus),
        "--layers",
        "1",
        "--architectures",
        "topk,gsae",
        "--k",
        "4",
        "--d-sae",
        "32",
        "--batch-size",
        "4",
        "--context-length",
        "16",
        "--max-tokens",
        str(4 * 16 * 120),
        "--shuffle-batches",
        "2",
        "--checkpoint-every",
        "2",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src"), "OMP_NUM_THREADS": "1"}

    def train(out, **popen):
        return subprocess.Popen(
            [sys.executable, "-m", "gradsae", "train", *args, "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )

    ref = train(tmp_path / "ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    out = tmp_path / "killed"
    kills = 0
    for wait_steps in (15, 60):  # kill twice, at different points
        p = train(out)
        log = out / "train_log.jsonl"
        t0 = time.time()
        while time.time() - t0 < 120 and p.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= wait_steps:
                break
            time.sleep(0.02)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 1 and (out / "checkpoint.safetensors").exists()
    p = train(out)
    assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    _assert_identical(tmp_path / "ref", out)
    steps = [json.loads(l)["step"] for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))


# ---- bad input: one line, exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lr", "-1"], "--lr -1.0 must be a positive number"),
        (["--epochs", "0"], "--epochs 0.0 trains nothing"),
        (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
        (["--checkpoint-every", "0"], "--checkpoint-every 0 must be at least 1"),
        (["--log-every", "0"], "--log-every 0 must be at least 1"),
        (["--architectures", "topk,nope"], "cannot train architecture 'nope'"),
        (["--layers", "7"], "layer 7 is out of range"),
        (["--memory-limit-gb", "0.0001"], "needs about"),
        (["--data", "EMPTY"], "yields no tokens"),
        (["--data", "BADGZ"], "corrupt or truncated gzip"),
        (["--cache", "NOCACHE"], "no activation cache"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(saved_models, tmp_path, capsys, flags, message):
    from gradsae.cli import main

    models, corpus = saved_models
    (tmp_path / "empty.txt").write_text("\n   \n")
    (tmp_path / "bad.txt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    flags = [
        {
            "EMPTY": str(tmp_path / "empty.txt"),
            "BADGZ": str(tmp_path / "bad.txt.gz"),
            "NOCACHE": str(tmp_path / "nothing"),
        }.get(f, f)
        for f in flags
    ]
    args = [
        "--model",
        str(models["gpt2"]),
        "--data",
        str(corpus),
        "--layers",
        "1",
        "--k",
        "4",
        "--d-sae",
        "32",
        "--batch-size",
        "2",
        "--context-length",
        "16",
        "--max-tokens",
        "256",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        *flags,
    ]
    if "--data" in flags and args.count("--data") == 2:
        i = args.index("--data")
        del args[i : i + 2]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], err


def test_resume_refuses_a_changed_config(saved_models, tmp_path):
    models, corpus = saved_models
    run(_cfg(models["llama"], corpus, tmp_path / "c", max_steps=2))
    with pytest.raises(GradsaeError, match=r"different config \(lr\)"):
        run(_cfg(models["llama"], corpus, tmp_path / "c", max_steps=2, lr=1e-3))


def test_a_grid_too_big_for_memory_is_refused_before_the_first_step(saved_models, tmp_path):
    models, corpus = saved_models
    with pytest.raises(GradsaeError, match=r"needs about \d+\.\d [GM]iB \(estimated\) but .* are available"):
        run(_cfg(models["llama"], corpus, tmp_path / "big", d_sae=[2**27]))  # ~0.5 TB of weights and Adam state
    assert not (tmp_path / "big" / "checkpoint.safetensors").exists()


# ---- --init-from: a fine-tune from a trained SAE ---------------------------------------------------


def test_a_resume_on_a_changed_corpus_is_refused(saved_models, tmp_path):
    """The corpus is fingerprinted by content: the same path with other documents is another run."""
    models, _ = saved_models
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"doc {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(100)))
    kw = dict(layers=[1], architectures=["topk"], max_tokens=4 * 16 * 12, checkpoint_every=2)
    run(_cfg(models["llama"], corpus, tmp_path / "o", max_steps=5, **kw))
    corpus.write_text("\n".join(f"other {i}: pack my box with five dozen liquor jugs {i}" for i in range(100)))
    with pytest.raises(GradsaeError, match="data_sha256"):
        run(_cfg(models["llama"], corpus, tmp_path / "o", **kw))


def test_init_from_starts_every_sae_as_the_given_one(saved_models, tmp_path):
    """With a learning rate of ~0 the fine-tuned SAEs compute what the starting SAE computes (its own input
    scaling mapped into the run's), whatever the run's own scaling factor."""
    from gradsae import load_sae

    models, corpus = saved_models
    base = run(
        _cfg(models["llama"], corpus, tmp_path / "base", architectures=["topk"], layers=[1], max_tokens=4 * 16 * 8)
    )
    start = load_sae(base / "topk_k4")
    tuned = run(
        _cfg(
            models["llama"],
            corpus,
            tmp_path / "tuned",
            architectures=["topk", "gsae"],
            layers=[1],
            max_tokens=4 * 16 * 2,
            init_from=str(base / "topk_k4"),
            lr=1e-12,
            seed=5,
        )
    )
    x = torch.randn(64, 64) * 3
    for name in ("topk_k4", "gsae_k4_b0.5"):
        sae = load_sae(tuned / name)
        torch.testing.assert_close(sae.decode(sae.encode(x)), start.decode(start.encode(x)), rtol=1e-4, atol=1e-4)
    cfg = json.loads((tuned / "config.json").read_text())
    assert cfg["init_from"] == str(base / "topk_k4")


def _topk_start_file(fmt: str, root):
    """A TopK SAE for the tiny llama's layer 1 (d_in 64, d_sae 32, k 4, unit-norm decoder rows, as every TopK
    trainer keeps them) written in ``fmt``'s own layout (the layouts test_peer_packages checks against the
    packages themselves); returns what --init-from is given. Gemma Scope's JumpReLU npz is the refused case."""
    import numpy as np
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    W_enc, b_enc = torch.randn(64, 32, generator=g) * 0.3, torch.randn(32, generator=g) * 0.1
    W_dec = torch.nn.functional.normalize(torch.randn(32, 64, generator=g), dim=-1)
    b_dec = torch.randn(64, generator=g) * 0.1
    if fmt == "saelens":
        from gradsae.saes.sae import SAE, SAEConfig

        sae = SAE.init_random(
            SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post")
        )
        with torch.no_grad():
            for name, t in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
                getattr(sae, name).copy_(t)
        sae.save(root / "lens")
        return root / "lens"
    if fmt == "sparsify":
        folder = root / "layers.1"
        folder.mkdir()
        weights = {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec}
        save_file(weights, folder / "sae.safetensors")
        cfg = {"activation": "topk", "num_latents": 32, "k": 4, "normalize_decoder": True, "d_in": 64}
        (folder / "cfg.json").write_text(json.dumps({**cfg, "multi_topk": False, "skip_connection": False}))
        return folder
    if fmt == "dictionary_learning":
        sd = {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "decoder.weight": W_dec.T.contiguous()}
        torch.save({**sd, "b_dec": b_dec, "k": torch.tensor(4), "threshold": torch.tensor(-1.0)}, root / "ae.pt")
        trainer = {"dict_class": "AutoEncoderTopK", "activation_dim": 64, "dict_size": 32, "k": 4, "layer": 1}
        (root / "config.json").write_text(json.dumps({"trainer": {**trainer, "lm_name": "x"}}))
        return root
    folder = root / "layer_1" / "width_32" / "average_l0_4"  # gemma-scope
    folder.mkdir(parents=True)
    arrays = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": b_enc.abs()}
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in arrays.items()})
    return folder


@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "dictionary_learning", "gemma-scope"])
def test_init_from_reads_every_format(saved_models, tmp_path, fmt):
    """--init-from takes a TopK SAE in any format gradsae reads, and the fine-tune starts as exactly that SAE
    (learning rate ~0); a JumpReLU SAE (Gemma Scope) is one line."""
    models, corpus = saved_models
    (tmp_path / "start").mkdir()
    start = _topk_start_file(fmt, tmp_path / "start")
    kw = dict(architectures=["topk"], layers=[1], max_tokens=4 * 16 * 2, init_from=str(start), lr=1e-12)
    if fmt == "gemma-scope":
        with pytest.raises(GradsaeError, match="is a jumprelu SAE: a fine-tune starts from a TopK-family SAE"):
            run(_cfg(models["llama"], corpus, tmp_path / "tuned", **kw))
        return
    tuned = load_sae(run(_cfg(models["llama"], corpus, tmp_path / "tuned", **kw)) / "topk_k4")
    ref = load_sae(start)
    x = torch.randn(64, 64) * 3
    torch.testing.assert_close(tuned.decode(tuned.encode(x)), ref.decode(ref.encode(x)), rtol=1e-4, atol=1e-4)


def test_init_from_resumes_bit_identically_and_refuses_a_changed_start(saved_models, tmp_path):
    from gradsae.saes.sae import SAE, SAEConfig

    models, corpus = saved_models
    start = SAE.init_random(
        SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post")
    )
    start.save(tmp_path / "start")
    kw = dict(
        architectures=["topk"],
        layers=[1],
        max_tokens=4 * 16 * 12,
        init_from=str(tmp_path / "start"),
        checkpoint_every=2,
    )
    ref = run(_cfg(models["llama"], corpus, tmp_path / "ref", **kw))
    run(_cfg(models["llama"], corpus, tmp_path / "cut", max_steps=5, **kw))  # stops after a checkpoint
    assert (tmp_path / "cut" / "checkpoint.safetensors").exists() and not (tmp_path / "cut" / "topk_k4").exists()
    run(_cfg(models["llama"], corpus, tmp_path / "cut", **kw))
    _assert_identical(ref, tmp_path / "cut")
    with torch.no_grad():
        start.W_dec.mul_(2)
    start.save(tmp_path / "start")
    with pytest.raises(GradsaeError, match="init_from_sha256"):
        run(_cfg(models["llama"], corpus, tmp_path / "cut", **{**kw, "max_tokens": 4 * 16 * 14}))


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(d_sae=[64]), "has d_sae 32, but the grid trains d_sae 64"),
        (dict(layers=[2]), "reads layer 1, but the grid trains layer 2"),
    ],
)
def test_init_from_refuses_another_width_or_layer(saved_models, tmp_path, kw, message):
    from gradsae.saes.sae import SAE, SAEConfig

    models, corpus = saved_models
    SAE.init_random(SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post")).save(
        tmp_path / "s"
    )
    with pytest.raises(GradsaeError, match=message):
        run(
            _cfg(
                models["llama"],
                corpus,
                tmp_path / "o",
                **{"architectures": ["topk"], "layers": [1], "init_from": str(tmp_path / "s"), **kw},
            )
        )


def test_init_from_refuses_a_dense_sae(saved_models, tmp_path):
    from gradsae.saes.sae import SAE, SAEConfig

    models, corpus = saved_models
    SAE.init_random(SAEConfig(d_in=64, d_sae=32, architecture="relu", hook_name="blocks.1.hook_resid_post")).save(
        tmp_path / "s"
    )
    with pytest.raises(GradsaeError, match="starts from a TopK-family SAE"):
        run(
            _cfg(
                models["llama"],
                corpus,
                tmp_path / "o",
                architectures=["topk"],
                layers=[1],
                init_from=str(tmp_path / "s"),
            )
        )


def test_kl_mse_fine_tune_fixes_its_weight_at_the_first_step_and_resumes_bit_identically(saved_models, tmp_path):
    """--e2e-balance (Karvonen 2025's KL + MSE fine-tune): the reconstruction weight is set once, from the first
    step's KL and NMSE (means over ranks), kept in the checkpoint, and a cut run resumes to the same weights."""
    from types import SimpleNamespace

    from gradsae.saes.sae import SAE, SAEConfig
    from gradsae.training.state import TrainState
    from gradsae.training.train import _balance

    state = TrainState()
    w = _balance(SimpleNamespace(e2e_recon_coef=2.0), state, 1, 3)
    assert w(torch.tensor(0.6), torch.tensor(0.2)) == pytest.approx(6.0)  # 2 x KL / NMSE
    assert w(torch.tensor(5.0), torch.tensor(1.0)) == pytest.approx(6.0)  # fixed after the first step
    assert state.e2e_coef == [0.0, pytest.approx(6.0), 0.0]

    models, corpus = saved_models
    start = SAE.init_random(
        SAEConfig(d_in=64, d_sae=32, architecture="topk", k=4, hook_name="blocks.1.hook_resid_post")
    )
    start.save(tmp_path / "start")
    kw = dict(
        architectures=["e2e"],
        layers=[1],
        max_tokens=4 * 16 * 12,
        init_from=str(tmp_path / "start"),
        checkpoint_every=2,
        e2e_balance=True,
        e2e_recon_coef=1.0,
    )
    ref = run(_cfg(models["llama"], corpus, tmp_path / "ref", **kw))
    run(_cfg(models["llama"], corpus, tmp_path / "cut", max_steps=5, **kw))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cut" / "checkpoint.safetensors"), framework="pt") as f:
        saved = json.loads(f.metadata()["gradsae_train_state"])["e2e_coef"]
    run(_cfg(models["llama"], corpus, tmp_path / "cut", **kw))
    _assert_identical(ref, tmp_path / "cut")
    assert len(saved) == 1 and saved[0] > 0
    plain = run(_cfg(models["llama"], corpus, tmp_path / "plain", **{**kw, "e2e_balance": False}))
    assert not torch.equal(load_sae(plain / "e2e_k4").W_dec, load_sae(ref / "e2e_k4").W_dec)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(e2e_balance=True, architectures=["e2e"]), "needs --e2e-recon-coef > 0"),
        (dict(e2e_balance=True, e2e_recon_coef=1.0), "add e2e to --architectures"),
    ],
)
def test_e2e_balance_refuses_what_it_cannot_weigh(saved_models, tmp_path, kw, message):
    models, corpus = saved_models
    with pytest.raises(GradsaeError, match=message):
        _cfg(models["llama"], corpus, tmp_path / "o", **kw)
