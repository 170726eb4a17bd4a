"""Stage 0c: a small decoder (HF Llama layout) pretrained as a language model on synthetic text.

Texts (captions and rendered conversations) are tokenized, joined with ``</s>`` between documents and cut into
fixed-length rows (packing). The output directory is an HF ``LlamaForCausalLM`` checkpoint plus the tokenizer,
and its config.json carries ``image_token_index`` so that a recipe's ``decoder:`` + ``vision_tower:`` start
(llavakit.train.build) keeps ``<image>`` at the tokenizer's own id.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...config import TextConfig
from ...model.text import CausalLM
from ...processing.tokenizer import Tokenizer
from .steps import run_steps


@dataclass
class LMTrainConfig:
    steps: int = 300
    batch_size: int = 32
    seq_len: int = 256
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.05
    init_std: float = 0.02  # std of every weight matrix at the start (HF's initializer_range is 0.02)
    max_seconds: float | None = None
    seed: int = 0


def pack(tokenizer: Tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """(N, seq_len) rows of concatenated documents, each ``<s> text </s>``; the ragged tail is dropped.

    Example: 3 documents of 100 tokens with seq_len 128 -> 300 tokens -> 2 rows (44 tokens dropped)."""
    eos = tokenizer.eos_token_id
    flat: list[int] = []
    for t in texts:
        flat += tokenizer.encode(t) + ([eos] if eos is not None else [])
    n = len(flat) // seq_len
    if n == 0:
        raise ValueError(f"the corpus has {len(flat)} tokens, fewer than one row of {seq_len}; add text")
    return torch.tensor(flat[: n * seq_len]).view(n, seq_len)


def init_weights(model: nn.Module, std: float) -> None:
    """Every matrix (embeddings, attention and MLP projections, LM head) drawn from N(0, std); norms stay at 1."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, std)


def train_lm(
    rows: torch.Tensor, config: TextConfig, cfg: LMTrainConfig, log: Callable[[str], None] = print
) -> tuple[CausalLM, list[float]]:
    """Next-token training on packed ``rows`` (N, T); returns the model and the loss of every step."""
    torch.manual_seed(cfg.seed)
    model = CausalLM(config)
    init_weights(model, cfg.init_std)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}], lr=cfg.lr
    )
    gen = torch.Generator().manual_seed(cfg.seed)

    def step_loss() -> torch.Tensor:
        batch = rows[torch.randint(len(rows), (min(cfg.batch_size, len(rows)),), generator=gen)]  # (B, T)
        logits = model(batch[:, :-1])  # (B, T-1, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    return model, run_steps(model, opt, cfg, step_loss, "lm", log)


def save_decoder(model: CausalLM, tokenizer: Tokenizer, out: str | Path) -> Path:
    """An HF ``LlamaForCausalLM`` directory (config.json, model.safetensors, tokenizer files)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        **c.to_hf(),
        "image_token_index": tokenizer.image_token_id,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("model.rotary")}
    if c.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(out)
    gen = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out
