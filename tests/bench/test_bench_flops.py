"""The FLOP count behind bench_generate.py's TTFT floor, against torch's FLOP counter on the real model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from script_module import BENCHMARKS, load_script


def test_prefill_flops_equal_the_counted_flops_of_a_first_token(tmp_path: Path) -> None:
    """Every FLOP of one image request up to its first token, counted by ``FlopCounterMode`` while llavakit
    runs it (SDPA's math path, which the counter sees as matmuls; the CPU flash kernel it does not count),
    equals ``prefill_flops`` plus what that leaves out on purpose: the projector, the LM head at the last
    position, and the masked upper half of the decoder's causal attention that the math path computes anyway.
    """
    bench = load_script("bench_generate", BENCHMARKS)
    from llavakit import LlavaModel, LlavaProcessor

    bench.build_checkpoint(tmp_path, "tiny", vocab=1000)
    model = LlavaModel.from_pretrained(tmp_path).eval()
    processor = LlavaProcessor.from_pretrained(tmp_path)
    inputs = processor(text=[bench.PROMPT], images=[bench.image(768, 1024)], return_tensors="pt")
    n = inputs["input_ids"].shape[1]  # prompt tokens, the image's among them
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
        model.generate(**inputs, max_new_tokens=1)
    counted = counter.get_total_flops()

    v, t = bench.geometry("tiny", 1000)
    hidden, heads = t["hidden_size"], t["num_attention_heads"] * bench.d_head(t)
    patches = 5 * (v["image_size"] // v["patch_size"]) ** 2  # 5 tiles: the projector runs before unpadding
    projector = 2 * patches * (v["hidden_size"] * hidden + hidden * hidden)
    head = 2 * hidden * 1000
    masked = t["num_hidden_layers"] * 2 * n * (n - 1) * heads  # math path: all n^2 scores, not n(n+1)/2
    assert counted == bench.prefill_flops("tiny", n) + projector + head + masked
