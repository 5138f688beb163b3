"""GradSAE influence: the math on hand-made tensors, and the plumbing on toy and tiny models."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gradsae import SAE, GradsaeError, SAEConfig
from gradsae.influence import Example, aggregate, bottom_latents, influence, resolve_k, target_from_logits, top_latents

from conftest import byte_tokenizer, make_tiny, random_sae


# ---- pure functions -------------------------------------------------------------------------


def test_targets_on_hand_made_logits():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))  # [1, 2, 3], already normalised
    ids, mask = torch.tensor([[0, 1]]), torch.tensor([[1, 1]])
    assert target_from_logits(logits, ids, mask, "logprob").item() == pytest.approx(torch.log(torch.tensor(0.4)).item())
    assert target_from_logits(logits, ids, mask, "prob").item() == pytest.approx(0.4)
    assert target_from_logits(logits, ids, mask, "first").item() == pytest.approx(0.5)
    assert target_from_logits(logits + 1.0, ids, mask, "logit").item() == pytest.approx(
        (torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.8)) + 2).item()
    )
    # a padded (masked) first slot: 'first' is the first *real* output token
    m2 = torch.tensor([[0, 1]])
    assert target_from_logits(logits, ids, m2, "first").item() == pytest.approx(0.8)
    assert target_from_logits(logits, ids, m2, "logprob").item() == pytest.approx(torch.log(torch.tensor(0.8)).item())
    with pytest.raises(GradsaeError):
        target_from_logits(logits, ids, mask, "loss")


def test_aggregations():
    g = torch.tensor([[[1.0, -2.0, 0.0], [3.0, 1.0, -1.0], [100.0, 100.0, 100.0]]])  # [1, T=3, C=3]
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(aggregate(g, mask, "relu-mean"), torch.tensor([[2.0, 0.5, 0.0]]))
    torch.testing.assert_close(aggregate(g, mask, "mean"), torch.tensor([[2.0, 0.0, 0.0]]))  # -0.5 -> 0
    torch.testing.assert_close(aggregate(g, mask, "signed"), torch.tensor([[2.0, -0.5, -0.5]]))


def test_resolve_k_and_the_50_percent_rule():
    assert resolve_k("50%", 103) == 51 and resolve_k("50%", 1) == 1 and resolve_k(10, 3) == 10
    assert resolve_k("25%", 8) == 2 and resolve_k("7", 0) == 7
    with pytest.raises(GradsaeError, match="percentage"):
        resolve_k("half", 10)


def test_top_and_bottom_selection():
    s = torch.tensor([0.0, 3.0, 1.0, 1.0, 0.0, 2.0, -1.0])
    assert top_latents(s, 2).tolist() == [1, 5]
    assert top_latents(s, 3).tolist() == [1, 5, 2]  # tie 2/3 broken by lower index
    assert bottom_latents(s, 2).tolist() == [2, 3]  # zeros and negatives are never BottomK
    assert bottom_latents(s, 10).tolist() == [2, 3, 5, 1]
    assert top_latents(torch.zeros(4), 3).numel() == 0


# ---- a linear toy LM: first order is exact ----------------------------------------------------


class LinearToyLM(nn.Module):
    """Embedding -> one identity 'block' (where the SAE splices) -> causal running mean -> linear head.
    Every logit is linear in the latents, so grad × act equals the exact effect of zeroing a latent."""

    def __init__(self, V=259, D=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(hidden_size=D, name_or_path="linear-toy")
        self.embed = nn.Embedding(V, D)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Identity()])
        self.lm_head = nn.Linear(D, V, bias=False)
        self.requires_grad_(False)

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **kw):
        x = self.model.layers[0](self.embed(input_ids))
        x = x.cumsum(1) / torch.arange(1, x.shape[1] + 1)[None, :, None]
        logits = self.lm_head(x)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def toy_sae(D=8, C=12, seed=0):
    sae = SAE.init_random(SAEConfig(d_in=D, d_sae=C, architecture="relu", hook_name="blocks.0.hook_resid_post"), seed)
    with torch.no_grad():
        sae.b_enc.fill_(0.3)
    return sae.requires_grad_(False)


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_grad_times_act_equals_exact_ablation_on_linear_toy(positions):
    model, tok, sae = LinearToyLM(), byte_tokenizer(), toy_sae()
    ex = [Example("abcdef", "ghi")]
    grad = influence(model, tok, sae, ex, target="logit", aggregation="mean", positions=positions)[0]
    exact = influence(model, tok, sae, ex, target="logit", aggregation="mean", positions=positions, method="exact")[0]
    assert exact.meta["exact_latents_ablated"] == exact.active_any > 0
    pos = exact.scores > 0
    assert pos.any()
    torch.testing.assert_close(grad.scores[pos], exact.scores[pos], rtol=1e-4, atol=1e-6)
    ig = influence(
        model, tok, sae, ex, target="logit", aggregation="mean", positions=positions, method="ig", ig_steps=4
    )[0]
    torch.testing.assert_close(ig.scores, grad.scores, rtol=1e-4, atol=1e-6)  # linear: the path is flat


@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen2", "gpt2"])
def test_exact_on_three_latent_toy_equals_rerunning_by_hand(arch):
    """Exact ablation (blocks 0..L once, the rest per chunk) equals whole re-runs with one latent zeroed."""
    from gradsae.splice import RowEdit, Splice

    model, tok = make_tiny(arch)
    sae = random_sae(d_sae=3, bias=0.5, seed=4)
    res = influence(model, tok, sae, [Example("hello", "abc")], target="logprob", method="exact")[0]
    ids = tok("hello" + " abc", add_special_tokens=True)["input_ids"]
    x = torch.tensor([ids])

    def lp(edit=None):
        with torch.no_grad(), Splice(model, sae, edits=None if edit is None else [edit]):
            logits = model(input_ids=x).logits[0].log_softmax(-1)
        n_p = len(tok("hello")["input_ids"])
        return sum(logits[t - 1, ids[t]].item() for t in range(n_p, len(ids)))

    full = lp()
    n = len(ids) - 1  # scored positions: every input position before the last token
    assert res.target_value == pytest.approx(full, abs=1e-5)
    for c in range(3):
        by_hand = (full - lp(RowEdit(zero=[c], at=0, until=len(ids) - 1))) / n
        assert res.scores[c].item() == pytest.approx(by_hand, abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batching_does_not_change_scores(arch):
    model, tok = make_tiny(arch)
    sae = random_sae(bias=0.1)
    ex = [Example("the cat", "sat"), Example("a much longer prompt here", "and more"), Example("x", "yz")]
    one = influence(model, tok, sae, ex, batch_size=1)
    three = influence(model, tok, sae, ex, batch_size=3)
    for a, b in zip(one, three):
        torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.baseline, b.baseline, rtol=1e-5, atol=1e-6)
        assert a.active_last.tolist() == b.active_last.tolist()
        assert a.target_value == pytest.approx(b.target_value, abs=1e-4)


def test_generated_output_and_json(tiny_llama):
    model, tok = tiny_llama
    sae = random_sae(bias=0.1)
    res = influence(model, tok, sae, ["hello wo"], max_new_tokens=3, stop=())[0]
    assert res.output and len(res.token_ids) == res.n_prompt + 3
    j = res.to_json(top=5, promoted={int(c): ["x"] for c in res.top(5)})
    assert len(j["top"]) <= 5 and j["top"][0]["score"] >= j["top"][-1]["score"] > 0
    assert all(r["score"] > 0 for r in j["bottom"])
    assert len(j["per_token"]["values"][0]) == len(res.tokens) and j["meta"]["method"] == "grad"
    assert j["top"][0]["promotes"] == ["x"]


def test_influence_rejects_bad_options(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(GradsaeError, match="unknown aggregation"):
        influence(model, tok, random_sae(), [Example("a", "b")], aggregation="max")


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_completeness_curves_run_from_none_to_all(ablation):
    """Keeping no latent recovers 0 of the target and keeping all of them 1, for every ranking; a curve point
    equals the target re-run by hand with the rest ablated."""
    from gradsae.influence.completeness import RANKINGS, completeness, orders
    from gradsae.influence.inputs import forward_target, join_ids, pack
    from gradsae.splice import RowEdit, Splice

    model, tok = make_tiny("llama")
    sae = random_sae(d_sae=24, bias=0.3, seed=2)
    means = torch.rand(24) * 0.2
    exs = [Example("the cat", " sat down"), Example("hello", " world")]
    curves = completeness(model, tok, sae, exs, [0, 3, 24], ablation=ablation, means=means, seed=1)
    for r in RANKINGS:
        f = curves.fraction[r]
        assert f.shape == (2, 3) and torch.isfinite(f).all()
        torch.testing.assert_close(f[:, 0], torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(f[:, 2], torch.ones(2), atol=1e-4, rtol=0)
    # the GradSAE point at N = 3 by hand
    res = influence(model, tok, sae, exs[:1], error="keep")[0]
    packed = pack(tok, [join_ids(tok, exs[0].prompt, exs[0].output)], "cpu")

    def target(edit):
        with torch.no_grad(), Splice(model, sae, error="keep", edits=[edit]) as s:
            return float(forward_target(model, packed, "logprob", s)[0])

    def ablate(keep):
        rest = [c for c in range(24) if c not in keep]
        return RowEdit(zero=rest, at=0) if ablation == "zero" else RowEdit(set={c: float(means[c]) for c in rest}, at=0)

    with torch.no_grad(), Splice(model, sae, error="keep", capture=True) as s:
        forward_target(model, packed, "logprob", s)
    keep = orders(res.scores, res.baseline, (s.latents[0] > 0).any(0), 1)["gradsae"][:3].tolist()
    none = target(ablate([]))
    want = (target(ablate(keep)) - none) / (res.target_value - none)
    assert float(curves.fraction["gradsae"][0, 1]) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("work", ["score", "generate"])
def test_the_lm_head_does_not_copy_the_unembedding_per_row(work):
    """The model slices its last positions before the LM head (``logits_to_keep``); torch's matmul of that
    non-contiguous slice with W_U used to copy W_U [V, D] once per row, when scoring (forward and backward) and at
    every generated token (1.8 GiB per row for Gemma-2-9B). Peak host memory of 16 rows stays far below 16 copies
    of W_U."""
    import gc

    from transformers import AutoModelForCausalLM, LlamaConfig

    from gradsae.generate import encode_prompts, greedy_generate
    from gradsae.influence.inputs import forward_target, join_ids, pack
    from gradsae.splice import Splice
    from gradsae.model import prepare

    from conftest import byte_tokenizer

    cfg = LlamaConfig(
        hidden_size=512, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1,
        vocab_size=16384, bos_token_id=256, eos_token_id=257, pad_token_id=258, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model, tok = prepare(AutoModelForCausalLM.from_config(cfg), byte_tokenizer(), "cpu", torch.bfloat16)
    w_u = model.get_output_embeddings().weight
    w_bytes = w_u.numel() * w_u.element_size()  # 16 MiB (bfloat16)
    sae = random_sae(d_in=512, d_sae=64, layer=0)
    prompt = "the cat sat on the mat " * 4
    packed = pack(tok, [join_ids(tok, prompt, " z")] * 16, "cpu")

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    def batch():
        if work == "generate":
            with Splice(model, sae) as s:
                return greedy_generate(model, tok, encode_prompts(tok, [prompt] * 16), 2, stop=(), splice=s).steps
        with Splice(model, sae, grad=True) as s:
            forward_target(model, packed, "logprob", s).sum().backward()
        return s.latents.grad.abs().sum()

    batch()  # the first call pays for what loads lazily
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    assert batch() > 0
    assert status("VmHWM") - before < 4 * w_bytes  # 16 copies before the fix
