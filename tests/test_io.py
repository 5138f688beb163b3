"""io.write_safetensors: the streamed safetensors writer (checkpoints, SAE files, dashboard states)."""

import pytest
import torch

from gradsae.errors import GradsaeError
from gradsae.io import write_safetensors


def test_what_the_safetensors_library_reads_back_is_what_was_written(tmp_path):
    from safetensors import safe_open

    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(4, 3, generator=g).bfloat16(),
        "f16": torch.randn(7, generator=g).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(6, 8, generator=g)[:, ::3].t(),  # not contiguous
    }
    path = write_safetensors(tmp_path / "x.safetensors", tensors, {"note": "ok", "n": 3})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"note": "ok", "n": "3"}
        assert set(f.keys()) == set(tensors)
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == t.dtype and torch.equal(got, t), name


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temp(tmp_path):
    from safetensors.torch import load_file

    path = tmp_path / "state.safetensors"
    write_safetensors(path, {"a": torch.ones(3)})

    class FailsAfterTheFirst(dict):  # the header is written, then the second tensor's copy fails
        def values(self):
            it = iter(super().values())
            yield next(it)
            raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        write_safetensors(path, FailsAfterTheFirst(a=torch.zeros(3), b=torch.zeros(4)))
    assert torch.equal(load_file(str(path))["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]


def test_a_dtype_safetensors_cannot_hold_is_one_line(tmp_path):
    with pytest.raises(GradsaeError, match="complex64"):
        write_safetensors(tmp_path / "c.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
