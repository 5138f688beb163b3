"""``gradsae explain``: the library call on a tiny model, the masking rows, the command end to end (tiny
model saved to disk), errors; one slow test on the bundled SmolLM2."""

import json

import pytest

from gradsae.saes import DEFAULT_SAE
from gradsae import GradsaeError, Splice, encode_prompts, greedy_generate
from gradsae.explain import ExplainConfig, explain, format_masking, mask_answers, parse_stop

from conftest import make_tiny, random_sae

PROMPT = "Question: who?\nAnswer:"


@pytest.fixture(scope="module")
def tiny():
    model, tok = make_tiny("llama")
    return model, tok, random_sae(bias=0.2, seed=3)


def test_explain_view_and_masking(tiny):
    model, tok, sae = tiny
    inf, view = explain(model, tok, sae, PROMPT, " abc", top=5, mask_k=["1", "10", "50%"], max_new_tokens=5)
    assert view["output"] == "abc" and len(view["top"]) == 5
    scores = [r["score"] for r in view["top"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert all(r["promotes"] for r in view["top"])
    cells = view["perturb"]["cells"]
    assert set(cells) == {f"{m}/top/{k}" for m in ("gradsae", "baseline") for k in ("1", "10", "50%")}
    assert cells["gradsae/top/1"]["k"] == 1 and cells["gradsae/top/10"]["k"] == 10
    assert cells["gradsae/top/50%"]["k"] == inf.n_active_last // 2
    # the control row is the plain greedy answer through the splice
    batch = encode_prompts(tok, [PROMPT])
    with Splice(model, sae) as s:
        ref = greedy_generate(model, tok, batch, max_new_tokens=5, splice=s).texts[0].strip()
    assert view["perturb"]["control"]["prediction"] == ref
    assert "GradSAE top 10 (10 latents)" in format_masking(view)


def test_masking_rows_match_separate_runs(tiny):
    model, tok, sae = tiny
    top = [int(c) for c in explain(model, tok, sae, PROMPT, " abc", top=3, mask_k=())[0].top(3)]
    unedited, answers = mask_answers(model, tok, sae, PROMPT, {"none": [], "three": top}, max_new_tokens=5)
    assert answers["none"] == unedited
    from gradsae import RowEdit

    with Splice(model, sae, edits=[RowEdit(zero=top, at="all")]) as s:
        alone = greedy_generate(model, tok, encode_prompts(tok, [PROMPT]), max_new_tokens=5, splice=s).texts[0]
    assert answers["three"] == alone.strip()


def test_explain_generates_the_output_when_not_given(tiny):
    model, tok, sae = tiny
    inf, view = explain(model, tok, sae, PROMPT, top=3, mask_k=(), max_new_tokens=4)
    assert view["output"] and "perturb" not in view and len(inf.tokens) > inf.n_prompt


def test_bad_input(tiny):
    model, tok, sae = tiny
    with pytest.raises(GradsaeError, match="percentage"):
        explain(model, tok, sae, PROMPT, " abc", mask_k=["half"])
    with pytest.raises(GradsaeError, match="empty prompt"):
        explain(model, tok, sae, "", " abc")
    assert parse_stop("\\n,###") == ("\n", "###") and parse_stop("") == ()


def test_command_end_to_end(tmp_path, tiny, capsys):
    from gradsae.cli import main

    model, tok, sae = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    sae.save(tmp_path / "sae")
    html, js = tmp_path / "out.html", tmp_path / "out.json"
    code = main(
        [
            "explain",
            "Q: <b>who</b>?\nA:",
            "--output",
            "abc",
            "--model",
            str(tmp_path / "model"),
            "--sae",
            str(tmp_path / "sae"),
            "--top",
            "4",
            "--mask-k",
            "1",
            "--max-new-tokens",
            "4",
            "--html",
            str(html),
            "--json",
            str(js),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "latent" in out and "promotes" in out and "GradSAE top 1" in out
    page = html.read_text()
    assert "<b>w" not in page and "&lt;" in page and 'class="example"' in page
    view = json.loads(js.read_text())
    assert len(view["top"]) == 4 and view["meta"]["config"]["top"] == 4
    # a missing SAE is a one-line error with the fix, exit code 2
    code = main(["explain", "hi", "--model", str(tmp_path / "model"), "--sae", str(tmp_path / "nope")])
    assert code == 2 and "no SAE at" in capsys.readouterr().err


def test_config_defaults_are_the_bundled_ones():
    cfg = ExplainConfig(prompt="x")
    assert cfg.model == "smollm2" and cfg.sae == DEFAULT_SAE and cfg.top == 10


@pytest.mark.slow
def test_explain_on_smollm2(smollm2, tmp_path):
    """The bundled model with the bundled SAE when it exists (else a random one at layer 9)."""
    from gradsae import SAE, SAEConfig, bundled_saes, load_sae
    from gradsae.viz.report import render_example_page

    model, tok = smollm2
    if DEFAULT_SAE in bundled_saes():
        sae = load_sae(DEFAULT_SAE)
    else:
        sae = SAE.init_random(
            SAEConfig(d_in=576, d_sae=2304, architecture="topk", k=32, hook_name="blocks.9.hook_resid_post"), seed=0
        )
    prompt = (
        "Context: The Halvard Bridge crosses the River Meln. It was opened in 1934.\n"
        "Question: In what year was the Halvard Bridge opened?\nAnswer:"
    )
    inf, view = explain(model, tok, sae, prompt, " 1934", top=5, mask_k=["10"], max_new_tokens=6)
    assert view["tokens"][-1].strip() in ("1934", "4", "34") and len(view["top"]) == 5
    assert view["per_token"]["values"] and len(view["per_token"]["values"][0]) == len(view["tokens"])
    assert view["perturb"]["cells"]["gradsae/top/10"]["k"] == 10
    page = render_example_page(view)
    assert page.count('class="t ans"') == len(view["tokens"]) - view["n_prompt"]
