"""What a training run reports as it goes: ``metrics.jsonl`` (and its ``loss.png``) and the progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """metrics.jsonl (one record per logged step; a resumed run drops records past its checkpoint)."""

    def __init__(self, path: Path, active: bool, keep_until: int) -> None:
        self.path, self.active = path, active
        if active and path.exists():
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            kept = [ln for ln in lines if keep_until and _step(ln) <= keep_until]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, rec: dict[str, Any]) -> None:
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")

    def plot(self, png: Path) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("note: matplotlib is not installed (pip install 'llavakit[train]'); no loss.png written")
            return
        recs = [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()] if self.path.exists() else []
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in recs], [r["loss"] for r in recs])
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)


def _step(line: str) -> float:
    """The step of a metrics line; inf for a line cut short (a kill or power loss while it was appended)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class Progress:
    """tqdm when installed (else one plain line per update): loss, learning rate, tokens/s."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled, self.total = enabled, total
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, r: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = f"loss {r['loss']:.4f} lr {r['lr']:.2e} {r['tokens_per_s']:.0f} tok/s"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(1)
        else:
            print(f"step {r['step']}/{self.total} {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
