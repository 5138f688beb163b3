"""The second-order check of grad x act: the Hutchinson estimate of every latent's quadratic term, against the
same term taken one latent at a time, and the corrected change against exact ablation."""

import itertools

import pytest
import torch

from conftest import make_tiny, random_sae
from gradsae.influence.inputs import forward_target, join_ids, pack
from gradsae.influence.reliability import reliability
from gradsae.splice import RowEdit, Splice


def _setup(arch="llama", d_sae=4, seed=3):
    model, tok = make_tiny(arch)
    sae = random_sae(d_sae=d_sae, bias=0.6, seed=seed)
    packed = pack(tok, [join_ids(tok, "the quick brown", " fox jumps")], "cpu")
    return model, sae, packed


def _one_latent_at_a_time(model, sae, packed):
    """v_c^T Hess v_c by a double backward per latent (no sign trick)."""
    mask = packed.score_mask("all", "logprob")[0]
    with Splice(model, sae, error="none", grad=True) as s, torch.enable_grad():
        tv = forward_target(model, packed, "logprob", s)
        (g,) = torch.autograd.grad(tv.sum(), s.latents, create_graph=True)
        v = -(s.latents.detach()[0] * mask[:, None])
        out = []
        for c in range(sae.d_sae):
            vc = torch.zeros_like(v)
            vc[:, c] = v[:, c]
            (u,) = torch.autograd.grad((g[0] * vc).sum(), s.latents, retain_graph=True)
            out.append(float((vc * u[0]).sum()))
    return torch.tensor(out)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_all_sign_patterns_give_each_latents_quadratic_term_exactly(arch):
    model, sae, packed = _setup(arch)
    signs = torch.tensor(list(itertools.product([-1, 1], repeat=sae.d_sae)))
    rel = reliability(model, sae, packed, "logprob", "all", signs=signs)
    want = _one_latent_at_a_time(model, sae, packed)
    assert want.abs().max() > 1e-4  # the target is curved here: the test can fail
    torch.testing.assert_close(rel.quadratic, want, rtol=1e-3, atol=1e-5)


def test_the_corrected_change_is_closer_to_exact_ablation():
    """Over the active latents of a few examples, first + quadratic/2 is nearer the true change (the target re-run
    with the latent zeroed) than the first-order term alone, in median absolute error."""
    model, tok = make_tiny("llama")
    sae = random_sae(d_sae=6, bias=0.8, seed=5)
    errs1, errs2 = [], []
    for prompt, out in (("the quick brown", " fox jumps"), ("hello there", " my friend"), ("one two", " three four")):
        packed = pack(tok, [join_ids(tok, prompt, out)], "cpu")
        signs = torch.tensor(list(itertools.product([-1, 1], repeat=6)))
        rel = reliability(model, sae, packed, "logprob", "all", signs=signs)
        mask = packed.score_mask("all", "logprob")[0]
        lo, hi = int(mask.nonzero().min()), int(mask.nonzero().max()) + 1

        def target(edit=None):
            with torch.no_grad(), Splice(model, sae, edits=None if edit is None else [edit]) as s:
                return float(forward_target(model, packed, "logprob", s)[0])

        full = target()
        for c in range(6):
            if rel.first[c] == 0:
                continue
            true = target(RowEdit(zero=[c], at=lo, until=hi)) - full
            errs1.append(abs(float(rel.first[c]) - true))
            errs2.append(abs(float(rel.corrected[c]) - true))
    assert len(errs1) >= 6
    assert torch.tensor(errs2).median() < torch.tensor(errs1).median()


def test_influence_command_flags_and_verifies(tmp_path, capsys):
    import json

    from gradsae.cli import main

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    random_sae(d_sae=16, bias=0.8, seed=5).save(tmp_path / "sae")
    out = tmp_path / "r.json"
    args = ["influence", "--model", str(tmp_path / "m"), "--sae", str(tmp_path / "sae"), "--prompt", "hello there"]
    args += ["--output", " my friend", "--verify", "flagged", "--reliability-tolerance", "0", "--out", str(out)]
    assert main(args) == 0
    rel = json.loads(out.read_text())["examples"][0]["reliability"]
    assert rel["active"] > 0 and rel["flagged"]  # tolerance 0: every active latent with curvature is flagged
    packed = pack(tok, [join_ids(tok, "hello there", " my friend")], "cpu")
    mask = packed.score_mask("all", "logprob")[0]
    lo, hi = int(mask.nonzero().min()), int(mask.nonzero().max()) + 1
    sae = random_sae(d_sae=16, bias=0.8, seed=5)
    with torch.no_grad(), Splice(model, sae) as s:
        full = float(forward_target(model, packed, "logprob", s)[0])
    row = rel["flagged"][0]
    with torch.no_grad(), Splice(model, sae, edits=[RowEdit(zero=[row["latent"]], at=lo, until=hi)]) as s:
        assert row["exact"] == pytest.approx(float(forward_target(model, packed, "logprob", s)[0]) - full, abs=1e-5)
    assert "flagged" in capsys.readouterr().out


def test_batched_rows_give_the_listed_latents_exact_quadratic_terms():
    model, sae, packed = _setup("llama", d_sae=6, seed=4)
    want = _one_latent_at_a_time(model, sae, packed)
    rel = reliability(model, sae, packed, "logprob", "all", latents=[5, 1, 3])
    torch.testing.assert_close(rel.quadratic[[5, 1, 3]], want[[5, 1, 3]], rtol=1e-3, atol=1e-5)
    assert rel.quadratic[[0, 2, 4]].abs().sum() == 0 and not rel.flagged[[0, 2, 4]].any()


def test_rows_in_several_passes_give_the_same_terms():
    from gradsae.influence.reliability import quadratic_rows

    model, sae, packed = _setup("llama", d_sae=6, seed=4)
    mask = packed.score_mask("all", "logprob")[0]
    one = quadratic_rows(model, sae, packed, "logprob", mask, "none", [0, 1, 2, 3, 4], rows=8)
    three = quadratic_rows(model, sae, packed, "logprob", mask, "none", [0, 1, 2, 3, 4], rows=2)
    torch.testing.assert_close(three, one, rtol=1e-4, atol=1e-6)
