"""The paper-faithful mode against the authors' code (../shared/reference/official-gradsae-code.md): the target
is the probability of the LAST generated token containing '[' with the mean over the positions their forward
pass had; TopK/BottomK candidates are all latents; 50% = n_active_last // 2; the correct-sample filter also
needs a '[' token."""

import pytest
import torch

from gradsae import GradsaeError, Splice
from gradsae.influence import Example, Influence, bracket_index, influence, resolve_k, target_from_logits, top_latents
from gradsae.squad import data as sq
from gradsae.squad import phases
from gradsae.squad.config import PerturbConfig

from conftest import make_tiny, random_sae

PROMPT = "Context: a b c.\nQuestion: which?\n"
OUTPUT = "Result = [[ b ]]"


@pytest.fixture(scope="module")
def tiny():
    model, tok = make_tiny("llama")
    return model, tok, random_sae(bias=0.2, seed=3)


def test_bracket_target_is_the_probability_of_the_marked_token():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]]))
    ids = torch.tensor([[0, 1, 2]])
    only_second = torch.tensor([[0, 1, 0]])
    assert target_from_logits(logits, ids, only_second, "bracket").item() == pytest.approx(0.8)


def test_bracket_index_is_the_last_token_with_a_bracket(tiny):
    _, tok, _ = tiny
    ids = tok(OUTPUT, add_special_tokens=False)["input_ids"]
    m = bracket_index(tok, ids)
    assert tok.decode([ids[m]]) == "[" and "[" not in tok.decode(ids[m + 1 :])
    assert m == OUTPUT.rindex("[")  # byte tokenizer: one token per character
    assert bracket_index(tok, tok("no opener", add_special_tokens=False)["input_ids"]) is None


def test_bracket_target_equals_the_authors_step_and_ignores_later_tokens(tiny):
    """Their loop re-runs prompt + generated prefix and takes softmax p(greedy token) at the '[' step, averaging
    grad × act over exactly those positions: the scores must not depend on tokens after the last '['."""
    model, tok, sae = tiny
    full = influence(model, tok, sae, [Example(PROMPT, OUTPUT)], target="bracket", keep_per_token=0)[0]
    cut = OUTPUT[: OUTPUT.rindex("[") + 1]  # everything up to and including the last '['
    short = influence(model, tok, sae, [Example(PROMPT, cut)], target="bracket", keep_per_token=0)[0]
    torch.testing.assert_close(full.scores, short.scores, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(full.baseline, short.baseline, rtol=1e-4, atol=1e-7)
    # the value: softmax probability of that token, recomputed by a plain spliced forward of the prefix
    ids = tok(PROMPT, add_special_tokens=True)["input_ids"] + tok(cut, add_special_tokens=False)["input_ids"]
    with torch.no_grad(), Splice(model, sae):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -2].float()
    assert full.target_value == pytest.approx(float(logits.softmax(-1)[ids[-1]]), rel=1e-4)
    with pytest.raises(GradsaeError, match="no output token contains"):
        influence(model, tok, sae, [Example(PROMPT, "just b")], target="bracket")


def test_topk_candidates_are_all_latents_not_only_those_active_last():
    scores = torch.tensor([0.0, 5.0, 1.0, 3.0])
    inf = Influence(
        id="x",
        prompt="",
        output="",
        token_ids=[],
        tokens=[],
        n_prompt=0,
        scores=scores,
        baseline=torch.zeros(4),
        active_last=torch.tensor([2, 3]),
        active_any=3,
        per_token_latents=torch.tensor([], dtype=torch.long),
        per_token=None,
        target_value=0.0,
    )
    assert inf.top(2).tolist() == [1, 3]  # latent 1 is not active at the last position, and still ranks first
    assert top_latents(scores, 10).tolist() == [1, 3, 2]


@pytest.mark.parametrize("n", [2, 3, 7, 103, 131])
def test_fifty_percent_is_rounded_down(n):
    assert resolve_k("50%", n) == n // 2


def test_correct_sample_filter_needs_a_bracket_with_the_bracket_target(tiny, monkeypatch):
    model, tok, sae = tiny
    cfg = PerturbConfig(template="official", target="bracket", min_f1=0.0, ks=["1"], progress=False, out="unused")
    ctx = phases.RunContext(cfg, model, tok, sae, None, sq.PromptBuilder("official", tok))
    qas = [sq.QA("with", "c", "a b c.", "which?", ["b"]), sq.QA("without", "c", "a b c.", "which?", ["b"])]
    outs = [OUTPUT, "b"]
    ids = [tok(o, add_special_tokens=False)["input_ids"] for o in outs]
    monkeypatch.setattr(ctx, "generate", lambda prompts, spliced=True, **kw: (list(outs), [list(i) for i in ids]))
    recs = phases.answer_batch(ctx, qas)
    assert [r.prediction for r in recs] == ["b", "b"] and [r.f1 for r in recs] == [1.0, 1.0]
    assert [r.kept for r in recs] == [True, False]  # same answer, but no '[' token: no target, not kept
    assert recs[0].sets is not None and recs[1].sets is None
