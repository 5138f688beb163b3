"""The splice on tiny random Llama / Gemma 2 / Qwen2 / GPT-2 models."""

import pytest
import torch

from gradsae import GradsaeError, RowEdit, Splice, encode_prompts, greedy_generate
from gradsae.hooks import decoder_layers, parse_hook_name, resolve_layer
from gradsae.capture import ResidualCapture
from gradsae.splice import LatentEdits

from conftest import make_tiny, random_sae

PROMPTS = ["the cat sat on", "a b c d e f g"]


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def n_hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_keep_error_leaves_logits_unchanged(tiny):
    model, tok = tiny
    batch = encode_prompts(tok, PROMPTS)
    clean = logits(model, batch)
    with Splice(model, random_sae(), error="keep"):
        spliced = logits(model, batch)
    torch.testing.assert_close(spliced, clean, rtol=0, atol=1e-6)
    with Splice(model, random_sae(), error="none"):
        recon = logits(model, batch)
    assert (recon - clean).abs().max() > 1e-3  # the reconstruction is not the model


def test_editing_an_active_latent_changes_logits_and_only_its_row(tiny):
    model, tok = tiny
    sae = random_sae()
    batch = encode_prompts(tok, PROMPTS)
    with Splice(model, sae, error="keep", capture=True) as s:
        base = logits(model, batch)
        H = s.latents
    active = int(H[0, -1].argmax())
    assert H[0, -1, active] > 0
    with Splice(model, sae, error="keep", edits=[RowEdit(zero=[active]), None]):
        edited = logits(model, batch)
    assert (edited[0] - base[0]).abs().max() > 1e-4
    torch.testing.assert_close(edited[1], base[1], rtol=0, atol=1e-6)


def test_set_edit_and_positions():
    H = torch.ones(2, 5, 4)
    e = LatentEdits.from_rows([RowEdit(zero=[1], set={2: 7.0}, at="last"), RowEdit(zero=[0], at=1)], 4, prompt_len=3)
    out = e.apply(H, offset=0)
    assert out[0, :2].eq(1).all() and out[0, 2:, 1].eq(0).all() and out[0, 2:, 2].eq(7).all()
    assert out[1, 0].eq(1).all() and out[1, 1:, 0].eq(0).all()
    # a later call (generation step at absolute position 5): the edits stay in force
    step = e.apply(torch.ones(2, 1, 4), offset=5)
    assert step[0, 0].tolist() == [1, 0, 7, 1] and step[1, 0].tolist() == [0, 1, 1, 1]
    newest = LatentEdits.from_rows([RowEdit(zero=[3], at="newest")], 4, prompt_len=2).apply(torch.ones(1, 4, 4), 0)
    assert newest[0, :3].eq(1).all() and newest[0, 3, 3] == 0
    with pytest.raises(GradsaeError, match="out of range"):
        LatentEdits.from_rows([RowEdit(zero=[9])], 4, prompt_len=2)


def test_hooks_removed_on_exit_and_on_exception(tiny_llama):
    model, tok = tiny_llama
    before = n_hooks(model)
    with Splice(model, random_sae()):
        assert n_hooks(model) == before + 1
    assert n_hooks(model) == before
    with pytest.raises(RuntimeError):
        with Splice(model, random_sae()):
            raise RuntimeError("boom")
    assert n_hooks(model) == before


def test_edits_reach_generated_tokens(tiny_llama):
    """Zeroing latents from the last prompt token on changes generation; the per-step latents show it."""
    model, tok = tiny_llama
    sae = random_sae(bias=0.2)
    batch = encode_prompts(tok, ["hello wor"])
    with Splice(model, sae, capture=True) as s:
        greedy_generate(model, tok, batch, max_new_tokens=4, stop=())
        base_steps = s.captured
    steps_active = [int((h[0, -1] > 0).sum()) for h in base_steps]
    assert min(steps_active) > 0
    latents = list(range(sae.d_sae))
    captured = []

    class Recorder(Splice):
        def _rebuild(self, X, Z, H, H0):
            out = super()._rebuild(X, Z, H, H0)
            captured.append(self.edits.apply(H, self.offset - 0) if self.edits is not None else H)
            return out

    with Recorder(model, sae, edits=[RowEdit(zero=latents, at="last")]) as s:
        gen = greedy_generate(model, tok, batch, max_new_tokens=4, stop=())
    assert len(captured) == gen.steps >= 2
    assert captured[0][0, -1].abs().sum() == 0 and captured[0][0, 0].abs().sum() > 0  # prompt: only last position
    for h in captured[1:]:  # every generated token
        assert h.abs().sum() == 0


def test_generation_with_and_without_cache_agree(tiny):
    model, tok = tiny
    sae = random_sae()
    batch = encode_prompts(tok, PROMPTS)
    with Splice(model, sae, edits=[RowEdit(zero=[1, 2, 3]), RowEdit(set={5: 3.0}, at="last")]) as s:
        a = greedy_generate(model, tok, batch, max_new_tokens=6, stop=(), splice=s)
    with Splice(model, sae, edits=[RowEdit(zero=[1, 2, 3]), RowEdit(set={5: 3.0}, at="last")]) as s:
        b = greedy_generate(model, tok, batch, max_new_tokens=6, stop=(), splice=s, use_cache=False)
    assert a.tokens == b.tokens


def test_batched_generation_matches_single_rows(tiny_llama):
    model, tok = tiny_llama
    batch = encode_prompts(tok, PROMPTS)
    both = greedy_generate(model, tok, batch, max_new_tokens=5, stop=())
    for i, p in enumerate(PROMPTS):
        one = greedy_generate(model, tok, encode_prompts(tok, [p]), max_new_tokens=5, stop=())
        assert one.tokens[0] == both.tokens[i]


def test_grad_wrt_latents_matches_finite_differences(tiny):
    """dtarget/dH[n, c] from the splice equals a central finite difference of editing H[n, c] alone."""
    model, tok = tiny
    model, sae = model.double(), random_sae(bias=0.1).double()
    ids = encode_prompts(tok, ["abcdefg"]).input_ids
    target_tok = 5

    with Splice(model, sae, error="none", grad=True) as s:
        model(input_ids=ids).logits[0, -1].log_softmax(-1)[target_tok].backward()
        H, G = s.latents.detach(), s.latents.grad
    # the entry with the largest gradient among active latents: HF computes norms, rotary and softmax in
    # float32 even in a float64 model, so a small gradient would drown in rounding noise
    score = G.abs() * (H > 0)
    pos, lat = divmod(int(score[0].argmax()), H.shape[-1])
    h = H[0, pos, lat].item()

    class OneEntry(Splice):  # set exactly H[0, pos, lat] to `value`
        value = h

        def _rebuild(self, X, Z, Hh, H0):
            Hh = Hh.clone()
            Hh[0, pos, lat] = self.value
            return self.sae.decode(Hh)

    def target_at(value):
        with OneEntry(model, sae, error="none") as sp, torch.no_grad():
            sp.value = value
            return model(input_ids=ids).logits[0, -1].log_softmax(-1)[target_tok].item()

    eps = 1e-3
    fd = (target_at(h + eps) - target_at(h - eps)) / (2 * eps)
    assert abs(G[0, pos, lat].item()) > 1e-3
    assert G[0, pos, lat].item() == pytest.approx(fd, rel=2e-3)
    # and a wrong gradient would be caught: the neighbouring latent's gradient differs
    assert G[0, pos, lat].item() != pytest.approx(G[0, pos, (lat + 1) % G.shape[-1]].item(), rel=0.05)


def test_residual_capture_grad_and_stop(tiny_llama):
    model, tok = tiny_llama
    batch = encode_prompts(tok, ["hello there"])
    with ResidualCapture(model, [0, 2], grad=True) as cap:
        out = model(input_ids=batch.input_ids)
        out.logits.sum().backward()
    assert set(cap.grads) == {0, 2} and cap.grads[0].shape == (1, batch.prompt_len, 64)
    with torch.no_grad(), ResidualCapture(model, [1], stop=True) as cap:
        assert cap.run(input_ids=batch.input_ids) is None
    with torch.no_grad():
        hs = model(input_ids=batch.input_ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cap.acts[1], hs[2])  # output of block 1 == hidden_states[2]


def test_layer_and_width_errors(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(GradsaeError, match="out of range"):
        Splice(model, random_sae(layer=7))
    with pytest.raises(GradsaeError, match="hidden size 64"):
        Splice(model, random_sae(d_in=32))
    with pytest.raises(GradsaeError, match="cannot map hook name"):
        Splice(model, random_sae(), layer="mlp.out")
    assert resolve_layer(model, -1) == 2 and len(decoder_layers(model)) == 3


def test_hook_names():
    assert parse_hook_name("blocks.9.hook_resid_post") == 9
    assert parse_hook_name("blocks.9.hook_resid_pre") == 8
    assert parse_hook_name("model.layers.9") == 9 == parse_hook_name("layers.9") == parse_hook_name("transformer.h.9")
    with pytest.raises(GradsaeError, match="embeddings"):
        parse_hook_name("blocks.0.hook_resid_pre")


def test_shared_prefix_gives_identical_generations(tiny):
    model, tok = tiny
    sae = random_sae(bias=0.1)
    batch = encode_prompts(tok, ["one prompt for all rows"]).repeat(3)
    T0 = batch.prompt_len
    rows = [None, RowEdit(zero=list(range(0, 256, 2)), at="last"), RowEdit(set={3: 5.0}, at="last")]
    with Splice(model, sae, edits=rows) as s:
        full = greedy_generate(model, tok, batch, max_new_tokens=5, stop=(), splice=s)
    with Splice(model, sae, edits=rows) as s:
        shared = greedy_generate(model, tok, batch, max_new_tokens=5, stop=(), splice=s, shared_prefix=T0 - 1)
    assert shared.tokens == full.tokens and full.tokens[0] != full.tokens[1]
    with Splice(model, sae, edits=[RowEdit(zero=[1], at="all")] * 3) as s:
        with pytest.raises(GradsaeError, match="shared prefix"):
            greedy_generate(model, tok, batch, max_new_tokens=2, splice=s, shared_prefix=T0 - 1)


def test_keep_first_counts_from_each_rows_first_real_token(tiny_llama):
    """With left padding, keep_first must protect each row's own first token, so a padded batch gives
    every row what it gets alone."""
    model, tok = tiny_llama
    sae = random_sae(bias=0.1)
    prompts = ["a long prompt with many tokens", "short"]
    batch = encode_prompts(tok, prompts)
    assert batch.attention_mask[1, 0] == 0  # row 1 is left-padded
    with Splice(model, sae, keep_first=1) as s:
        both = greedy_generate(model, tok, batch, max_new_tokens=4, stop=(), splice=s)
    for i, p in enumerate(prompts):
        with Splice(model, sae, keep_first=1) as s:
            one = greedy_generate(model, tok, encode_prompts(tok, [p]), max_new_tokens=4, stop=(), splice=s)
        assert one.tokens[0] == both.tokens[i]
    with Splice(model, sae, keep_first=0) as s:
        plain = greedy_generate(model, tok, encode_prompts(tok, ["short"]), max_new_tokens=4, stop=(), splice=s)
    with Splice(model, sae, keep_first=5) as s:
        kept = greedy_generate(model, tok, encode_prompts(tok, ["short"]), max_new_tokens=4, stop=(), splice=s)
    assert plain.tokens != kept.tokens  # keeping the whole 5-token prompt unspliced changes the output


@pytest.mark.parametrize("error", ["none", "keep"])
def test_shared_trunk_gives_identical_generations(tiny, error):
    """Blocks 0..L once for all rows (the perturbation grid): same tokens and logits as the plain batch,
    with edits at every position and a latent_fn, for a middle and the last layer."""
    model, tok = tiny
    long = "one prompt for all rows, longer than Gemma 2's sliding window of 64 positions in the tiny model"
    batch = encode_prompts(tok, [long]).repeat(4)
    rows = [
        None,
        RowEdit(zero=list(range(0, 256, 2)), at="all"),
        RowEdit(set={3: 5.0}, at="last"),
        RowEdit(zero=list(range(1, 256, 3)), at="all"),
    ]
    keep = torch.ones(4, 256)
    keep[3, :40] = 0

    def fn(H):
        return H * keep[:, None, :]

    for layer in (1, 2):
        sae = random_sae(bias=0.1, layer=layer)
        with Splice(model, sae, edits=rows, error=error, latent_fn=fn) as s:
            full = greedy_generate(model, tok, batch, max_new_tokens=5, stop=(), splice=s)
        with Splice(model, sae, edits=rows, error=error, latent_fn=fn) as s:
            shared = greedy_generate(model, tok, batch, max_new_tokens=5, stop=(), splice=s, shared_trunk=True)
        assert shared.tokens == full.tokens
        assert len({tuple(t) for t in full.tokens}) > 1  # the edits change something
        # the blocks' own forward is back: a plain call equals a plain call before
        assert all("forward" not in b.__dict__ for b in decoder_layers(model))


def test_shared_trunk_refuses_different_rows(tiny_llama):
    model, tok = tiny_llama
    batch = encode_prompts(tok, ["one prompt", "another prompt"])
    with Splice(model, random_sae(), edits=None) as s:
        with pytest.raises(GradsaeError, match="shared_trunk"):
            greedy_generate(model, tok, batch, max_new_tokens=2, splice=s, shared_trunk=True)
    with pytest.raises(GradsaeError, match="shared_trunk"):
        greedy_generate(model, tok, batch.repeat(1), max_new_tokens=2, shared_trunk=True)


def test_a_grad_splice_gives_the_sae_weights_no_gradient_and_restores_them():
    """∂target/∂H only: no dW_dec (a [C, D] tensor per row for a batched matmul) is built through a splice, and
    the SAE's parameters are as they were afterwards."""
    from gradsae.splice import Splice

    model, tok = make_tiny("llama")
    sae = random_sae()
    sae.requires_grad_(True)
    sae.b_dec.requires_grad_(False)  # a mixed state, restored as it was
    ids = torch.tensor([tok("the cat sat on the mat", add_special_tokens=True)["input_ids"]] * 3)
    with Splice(model, sae, grad=True) as s:
        assert not any(p.requires_grad for p in sae.parameters())
        model(input_ids=ids).logits[:, -1].logsumexp(-1).sum().backward()
    assert s.latents.grad is not None and s.latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in sae.parameters())
    assert sae.W_dec.requires_grad and sae.W_enc.requires_grad and not sae.b_dec.requires_grad
