"""The GPU path: the streaming trainer, influence and one perturbation batch on CUDA, each compared with
the CPU. Skipped when no GPU is present."""

import pytest
import torch

from conftest import make_tiny, random_sae

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_streaming_trainer_on_cuda(tmp_path):
    from gradsae import load_sae
    from gradsae.capture import capture
    from gradsae.training.train import TrainConfig, run

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"doc {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(100)))
    ids = torch.randint(0, 256, (2, 12))
    a_cpu, g_cpu = capture(model, ids, [0, 2], grad=True)
    a_gpu, g_gpu = capture(model.cuda(), ids.cuda(), [0, 2], grad=True)
    for l in (0, 2):
        torch.testing.assert_close(a_gpu[l].cpu(), a_cpu[l], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(g_gpu[l].cpu(), g_cpu[l], rtol=1e-2, atol=1e-4)
    outs = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(
            model=str(tmp_path / "m"),
            data=[str(corpus)],
            out=str(tmp_path / device),
            layers=[1],
            architectures=["topk", "gsae", "e2e"],
            k=[4],
            d_sae=[32],
            batch_size=4,
            context_length=16,
            max_tokens=4 * 16 * 8,
            shuffle_batches=4,
            device=device,
            threads=1,
            progress=False,
            warmup_steps=1,
        )
        outs[device] = run(cfg)
    for name in ("topk_k4", "gsae_k4_b0.5", "e2e_k4"):
        cpu, gpu = load_sae(outs["cpu"] / name), load_sae(outs["cuda"] / name)
        assert all(torch.isfinite(t).all() for t in gpu.state_dict().values())
        # 8 Adam steps from the same start: close, not bit-equal (different kernels)
        torch.testing.assert_close(gpu.W_dec, cpu.W_dec, rtol=0, atol=5e-2)


def test_influence_on_cuda():
    from gradsae.influence import Example, influence

    model, tok = make_tiny("llama")
    sae = random_sae(bias=0.1)
    ex = [Example("the cat", "sat"), Example("a longer prompt", "here")]
    cpu = influence(model, tok, sae, ex, batch_size=2)
    gpu = influence(model.cuda(), tok, sae.cuda(), ex, batch_size=2)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.scores.cpu(), a.scores, rtol=1e-3, atol=1e-5)


def test_one_perturbation_batch_on_cuda():
    from gradsae import RowEdit, Splice, encode_prompts, greedy_generate

    model, tok = make_tiny("gpt2")
    sae = random_sae(bias=0.1)
    prompts = ["the cat sat on", "the cat sat on", "the cat sat on"]
    edits = [None, RowEdit(zero=list(range(0, 128))), RowEdit(zero=list(range(128, 256)), at="last")]
    res = {}
    for device in ("cpu", "cuda"):
        m, s = model.to(device), sae.to(device)
        with Splice(m, s, error="none", edits=edits) as sp:
            res[device] = greedy_generate(
                m, tok, encode_prompts(tok, prompts, device=device), max_new_tokens=6, stop=(), splice=sp
            ).tokens
    assert res["cuda"] == res["cpu"]


@pytest.mark.slow
def test_smollm2_influence_perturbation_and_training_on_cuda_match_the_cpu(smollm2, tmp_path):
    """The real model: GradSAE scores, one perturbation batch and 16 training steps on CUDA against the CPU.
    Tolerances: scores within 1e-3 relative (float32 kernels differ), the same top-10 latents but at most 2,
    the same greedy answers, SAE weights after 16 Adam steps within 5e-2."""
    from gradsae import RowEdit, Splice, encode_prompts, greedy_generate, load_sae
    from gradsae.saes import DEFAULT_SAE
    from gradsae.influence import Example, influence
    from gradsae.training.train import TrainConfig, run

    model, tok = smollm2
    sae = load_sae(DEFAULT_SAE)
    prompt = "Context: The bridge opened in 1932.\nQuestion: When did the bridge open?\nAnswer:"
    cpu = influence(model, tok, sae, [Example(prompt, " 1932")])[0]
    gpu = influence(model.cuda(), tok, sae.cuda(), [Example(prompt, " 1932")])[0]
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-3, atol=1e-6)
    assert len(set(cpu.top(10).tolist()) & set(gpu.top(10).tolist())) >= 8
    edits = [None, RowEdit(zero=cpu.top(10).tolist(), at="all")]
    answers = {}
    for device in ("cpu", "cuda"):
        m, s = model.to(device), sae.to(device)
        with Splice(m, s, error="keep", edits=edits) as sp:
            batch = encode_prompts(tok, [prompt, prompt], device=device)
            answers[device] = greedy_generate(m, tok, batch, max_new_tokens=8, splice=sp).texts
    assert answers["cuda"] == answers["cpu"]
    model.cpu()
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"Paragraph {i}: the bridge over the river opened in {1900 + i}." for i in range(200)))
    outs = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(
            data=[str(corpus)],
            out=str(tmp_path / device),
            layers=[6],
            architectures=["topk", "gsae"],
            k=[32],
            d_sae=[1024],
            batch_size=4,
            context_length=64,
            max_tokens=4 * 64 * 16,
            shuffle_batches=4,
            device=device,
            dtype="float32",
            progress=False,
            warmup_steps=1,
        )
        outs[device] = run(cfg)
    for name in ("topk_k32", "gsae_k32_b0.5"):
        a, b = load_sae(outs["cpu"] / name), load_sae(outs["cuda"] / name)
        torch.testing.assert_close(b.W_dec, a.W_dec, rtol=0, atol=5e-2)
