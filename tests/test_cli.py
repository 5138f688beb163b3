"""The command line: help lists the commands, bad input prints one clear line."""
import subprocess
import sys

from gradsae.cli import main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "info", "convert"):
        assert cmd in out


def test_convert_round_trip_and_error(tmp_path, capsys):
    from conftest import random_sae

    random_sae(arch="topk", k=4).save(tmp_path / "a")
    assert main(["convert", str(tmp_path / "a"), str(tmp_path / "b"), "--dtype", "float16"]) == 0
    assert (tmp_path / "b" / "sae_weights.safetensors").exists()
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no SAE at" in err[0]


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "gradsae", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "convert" in out.stdout
