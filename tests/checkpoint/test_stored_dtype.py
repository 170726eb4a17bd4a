"""The dtype ``convert`` and ``merge-lora`` write by default: the one holding most of a checkpoint's float weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llavakit.checkpoint.convert import stored_dtype
from llavakit.checkpoint.load import float_elements_by_dtype


def _mixed() -> dict[str, torch.Tensor]:
    # the first key (sorted as safetensors stores them) is a small float32 norm; the matrices are bfloat16
    return {
        "a.norm.weight": torch.ones(8, dtype=torch.float32),
        "b.proj.weight": torch.zeros(8, 8, dtype=torch.bfloat16),
        "c.embed.weight": torch.zeros(16, 8, dtype=torch.bfloat16),
        "d.position_ids": torch.arange(8),
    }


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded"])
def test_majority_dtype_not_first_tensor(tmp_path, fmt):
    tensors = _mixed()
    if fmt == "safetensors":
        save_file(tensors, str(tmp_path / "model.safetensors"))
    elif fmt == "bin":
        torch.save(tensors, tmp_path / "pytorch_model.bin")
    else:
        import json

        names = sorted(tensors)
        save_file({k: tensors[k] for k in names[:2]}, str(tmp_path / "model-00001-of-00002.safetensors"))
        save_file({k: tensors[k] for k in names[2:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
        index = {k: f"model-0000{1 + (i >= 2)}-of-00002.safetensors" for i, k in enumerate(names)}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    assert float_elements_by_dtype(tmp_path) == {torch.float32: 8, torch.bfloat16: 64 + 128}
    assert stored_dtype(tmp_path) == torch.bfloat16


def test_no_float_tensors_means_float32(tmp_path):
    save_file({"ids": torch.arange(4)}, str(tmp_path / "model.safetensors"))
    assert stored_dtype(tmp_path) == torch.float32
