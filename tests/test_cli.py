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


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os
    import stat

    from gradsae.io import atomic_write_text

    p = atomic_write_text(tmp_path / "x.json", "{}")
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # readable by others, like an ordinary file


def test_help_shows_each_default_once(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "(default: " not in out or out.count("(default: )") == 0
    assert all(line.count("(default:") <= 1 for line in out.splitlines())


def test_command_reference_is_current():
    """docs/cli.md is generated from the config dataclasses; a changed option must regenerate it."""
    from pathlib import Path

    from gradsae.cli import command_reference

    path = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert path.read_text() == command_reference(), "docs/cli.md is stale: run `make docs`"
