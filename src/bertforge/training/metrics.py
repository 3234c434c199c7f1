"""Where training numbers go: a JSONL file (one object per logged step), TensorBoard event files,
and a PNG plot of the curves (training loss, held-out MLM/NSP accuracy) redrawn at every evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bertforge.files import write_atomic


class MetricsLogger:
    """Appends to `metrics.jsonl`, writes TensorBoard events under `tensorboard/`, draws `curves.png`."""

    def __init__(self, directory: str | Path, *, tensorboard: bool = True) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.directory / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.directory / "tensorboard"))

    def log(self, step: int, values: dict[str, float], *, prefix: str) -> None:
        record = {"step": step, "split": prefix, **{k: _plain(v) for k, v in values.items()}}
        with self.jsonl.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.writer.flush()

    def records(self) -> list[dict]:
        if not self.jsonl.is_file():
            return []
        return [json.loads(line) for line in self.jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (a resumed run re-logs the steps after its checkpoint)."""
        kept = [r for r in self.records() if r["step"] <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(self.jsonl, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def plot(self, path: str | Path | None = None, *, title: str = "pre-training") -> Path:
        return plot_curves(self.records(), path or self.directory / "curves.png", title=title)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(records: list[dict], path: str | Path, *, title: str) -> Path:
    """Training loss (left) and held-out accuracies (right) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["split"] == "train"]
    heldout = [r for r in records if r["split"] == "heldout"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (MLM + NSP)", alpha=0.8)
    if heldout:
        left.plot([r["step"] for r in heldout], [r["loss"] for r in heldout], "o-", label="held-out loss")
        right.plot([r["step"] for r in heldout], [r["mlm_accuracy"] for r in heldout], "o-", label="MLM accuracy")
        if any(r.get("nsp_accuracy") is not None for r in heldout):
            right.plot([r["step"] for r in heldout], [r.get("nsp_accuracy") for r in heldout], "s-",
                       label="NSP accuracy")
    left.set(xlabel="step", ylabel="loss", title=f"{title}: loss")
    right.set(xlabel="step", ylabel="accuracy", title="held-out accuracy", ylim=(0, 1))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.tight_layout()
    path = Path(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
