"""The shared runtime options: every command that runs a model or an SAE takes --device/--dtype/--threads from
one dataclass, defaults to the GPU when there is one, and records the device it used."""

import dataclasses
import importlib
import json

import pytest
import torch

from gradsae import cli, options
from gradsae.errors import GradsaeError
from gradsae.options import ModelOptions, RuntimeOptions, resolve_device, start


def _configs():
    for name, (mod, cls_name, _, _) in cli.COMMANDS.items():
        yield name, getattr(importlib.import_module(mod), cls_name)


def test_every_command_that_loads_a_model_takes_the_shared_runtime_options():
    loaders = [name for name, cls in _configs() if "model" in {f.name for f in dataclasses.fields(cls)}]
    assert {
        "demo",
        "explain",
        "influence",
        "perturb",
        "steer",
        "stats",
        "experiment",
        "cache",
        "train",
        "eval",
        "sensitivity",
        "dashboard",
    } <= set(loaders)
    for name, cls in _configs():
        if name in loaders:
            assert issubclass(cls, ModelOptions), name
            fields = {f.name: f for f in dataclasses.fields(cls)}
            assert fields["device"].default == "auto", name
            assert fields["threads"].default == 0, name
        else:  # a command with no model must not pretend to have a device
            assert "device" not in {f.name for f in dataclasses.fields(cls)}, name


def test_no_command_stays_on_the_cpu_when_cuda_is_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for name, cls in _configs():
        if issubclass(cls, RuntimeOptions):
            default = next(f.default for f in dataclasses.fields(cls) if f.name == "device")
            assert resolve_device(default) == "cuda", name


def test_auto_under_torchrun_takes_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu", ""])
def test_a_bad_device_is_refused_when_the_config_is_built(device):
    with pytest.raises(GradsaeError, match="--device"):
        RuntimeOptions(device=device)


def test_bad_dtype_and_threads_are_one_line_from_the_cli(capsys):
    assert cli.main(["eval", "--threads", "-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads -2" in err[0]
    assert cli.main(["cache", "--layers", "1", "--device", "cuda:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]  # refused before any model is loaded


def test_start_applies_threads_and_announces_once(capsys, monkeypatch):
    monkeypatch.setattr(options, "_announced", set())
    n = torch.get_num_threads()
    try:
        rt = start(RuntimeOptions(device="cpu", threads=1), "test")
        assert torch.get_num_threads() == 1
        assert capsys.readouterr().err == ""  # nothing before the work begins: bad input stays one line
        rt.announce("test")
        start(RuntimeOptions(device="cpu", threads=1), "other").announce("other")
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    assert err.count("running on cpu") == 1
    assert rt.as_config() == {"device_used": "cpu", "device_name": "CPU", "dtype_used": "float32", "threads_used": 1}


def test_the_cache_records_the_device_it_ran_on(tmp_path):
    from conftest import make_tiny
    from gradsae.training.cache import CacheConfig, run

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox {i}" for i in range(30)))
    out = run(
        CacheConfig(
            model=str(tmp_path / "m"),
            layers=[1],
            data=[str(corpus)],
            out=str(tmp_path / "cache"),
            context_length=16,
            seqs_per_shard=4,
            batch_size=4,
            max_tokens=128,
            progress=False,
        )
    )
    conf = json.loads((out / "config.json").read_text())
    assert conf["device"] == "auto" and conf["runtime"]["device_used"] == "cpu"
    assert conf["runtime"]["threads_used"] == torch.get_num_threads()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--beta", "nan"], "--beta nan: give a finite number"),
        (["train", "--beta", "-1"], "--beta -1.0: must be at least 0"),
        (["train", "--memory-limit-gb", "-1"], "--memory-limit-gb -1.0: must be at least 0"),
        (["eval", "--steer-alphas", "nan"], "--steer-alphas nan: give a finite number"),
        (["eval", "--steer-alphas", "inf"], "--steer-alphas inf: give a finite number"),
        (["eval", "--steer-alphas", ""], "--steer-alphas is empty"),
        (["eval", "--n-seqs", "-1"], "--n-seqs -1: must be at least 0"),
        (["eval", "--steer-latents", "-1"], "--steer-latents -1: must be at least 0"),
        (["eval", "--steer-top-n", "0"], "--steer-top-n 0: must be at least 1"),
        (["eval", "--dead-batch-tokens", "0"], "--dead-batch-tokens 0: must be at least 1"),
        (["eval", "--batch-size", "-1"], "--batch-size -1: must be at least 0"),
        (["dashboard", "--influence-tokens", "-5"], "--influence-tokens -5: must be at least -1"),
        (["dashboard", "--threads", "-2"], "--threads -2"),
        (["sensitivity", "--threads", "-2"], "--threads -2"),
        (["cache", "--layers", "1", "--threads", "-2"], "--threads -2"),
        (["perturb", "--min-f1", "nan"], "--min-f1 nan"),
    ],
)
def test_values_that_mean_nothing_are_one_line_before_any_work(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_an_option_parser_error_is_one_line_pointing_at_help(capsys):
    for argv in (["train", "--k", "abc"], ["eval", "--selection", "x"], ["nope"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith("--help)"), err


def test_the_command_reference_states_the_ranges():
    ref = cli.command_reference()
    assert "(0: all) (≥ 0)" in ref and "0 = none (≥ -1)" in ref


def test_no_command_overwrites_a_file_it_did_not_write(tmp_path, capsys):
    """--out pointing at someone else's folder (a Hugging Face model, a notes folder): one line, nothing written."""
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}')
    (folder / "dashboard.json").write_text('{"my": "notes"}')
    before = {p.name: p.read_text() for p in folder.iterdir()}
    for argv in (
        ["train", "--out", str(folder), "--layers", "1"],
        ["cache", "--out", str(folder), "--layers", "1"],
        ["dashboard", "--out", str(folder)],
        ["perturb", "--out", str(folder)],
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "was not written by" in err[0], (argv, err)
    assert {p.name: p.read_text() for p in folder.iterdir()} == before
    assert cli.main(["dashboard", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err


def test_wrong_advice_is_gone():
    from gradsae.cli import _final_name, _resume_hint

    assert _final_name("/d/.rate.html.k3j2_a9.tmp") == "/d/rate.html"  # the file meant, not the temp name
    assert _final_name("/d/rate.png") == "/d/rate.png"
    assert _resume_hint("rate") == "" and _resume_hint("eval") == ""  # nothing to resume there
    assert "rerun the same command" in _resume_hint("train")


def test_eval_out_naming_a_file_is_refused_before_any_work(tmp_path, capsys):
    f = tmp_path / "eval.json"
    f.write_text("{}")
    assert cli.main(["eval", "--out", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]


def test_rows_longer_than_the_models_context_are_one_line(tmp_path, capsys):
    from conftest import make_tiny

    from gradsae.model import context_size

    model, tok = make_tiny("llama")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    n = context_size(model)
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text " * 50)
    capsys.readouterr()  # the model's own saving output
    for cmd in ("train", "dashboard"):
        argv = [
            cmd,
            "--model",
            str(tmp_path / "m"),
            "--data",
            str(corpus),
            "--context-length",
            str(n + 1),
            "--out",
            str(tmp_path / cmd),
        ]
        assert cli.main(argv + (["--layers", "1"] if cmd == "train" else ["--sae", "tiny-missing"])) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and (f"context of {n} tokens" in err[0] or "tiny-missing" in err[0]), err


def test_a_second_writer_is_refused_before_any_model_loads(tmp_path, capsys):
    from gradsae.io import output_lock

    for argv in (["train", "--layers", "1"], ["cache", "--layers", "1"], ["dashboard"]):
        out = tmp_path / argv[0]
        with output_lock(out):
            assert cli.main([*argv, "--out", str(out), "--model", str(tmp_path / "no-such-model")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another gradsae run is writing" in err[0], (argv, err)
