"""``gradsae influence`` end to end on a tiny model saved to disk."""

import json

import pytest

from gradsae.cli import main


@pytest.mark.parametrize("method", ["grad", "exact", "ig"])
def test_influence_command_writes_json_and_prints_table(tiny_dir, capsys, method):
    out = tiny_dir / f"inf-{method}.json"
    rc = main(
        [
            "influence",
            "--model",
            str(tiny_dir / "m"),
            "--sae",
            str(tiny_dir / "sae"),
            "--prompt",
            "the cat sat on the",
            "--output",
            "mat",
            "--method",
            method,
            "--ig-steps",
            "3",
            "--top",
            "5",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "latent" in printed and "promotes" in printed
    data = json.loads(out.read_text())
    ex = data["examples"][0]
    assert data["meta"]["config"]["method"] == method and ex["output"] == "mat"
    assert 0 < len(ex["top"]) <= 5 and all("promotes" in r for r in ex["top"])


def test_influence_input_file_and_errors(tiny_dir, capsys):
    inp = tiny_dir / "in.jsonl"
    inp.write_text('{"prompt": "hello", "output": "world", "id": "a"}\n{"prompt": "abc", "output": "def"}\n')
    assert (
        main(
            [
                "influence",
                "--model",
                str(tiny_dir / "m"),
                "--sae",
                str(tiny_dir / "sae"),
                "--input",
                str(inp),
                "--out",
                str(tiny_dir / "o.json"),
            ]
        )
        == 0
    )
    data = json.loads((tiny_dir / "o.json").read_text())
    assert [e["id"] for e in data["examples"]] == ["a", "1"]
    inp.write_text('{"prompt": "hello"\n')
    capsys.readouterr()
    assert main(["influence", "--model", str(tiny_dir / "m"), "--sae", str(tiny_dir / "sae"), "--input", str(inp)]) == 2
    assert "malformed JSON on line 1" in capsys.readouterr().err
    assert main(["influence", "--model", str(tiny_dir / "m"), "--sae", str(tiny_dir / "sae")]) == 2
