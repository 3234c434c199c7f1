"""Where training numbers go: a JSONL file (one object per logged step), TensorBoard event files,
and a PNG plot of the curves (training loss, held-out MLM/NSP accuracy) redrawn at every evaluation.
`plot_curves` draws every job's curves.png (pre-training here, fine-tuning in finetune_loop)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
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
        return plot_pretraining_curves(self.records(), path or self.directory / "curves.png", title=title)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Curve:
    """One line of a plot: a label, the steps and the values at them; `style` is matplotlib's format string."""

    label: str
    steps: list[int]
    values: list[float]
    style: str = "-"
    alpha: float = 1.0


def plot_curves(path: str | Path, *, losses: list[Curve], scores: list[Curve], titles: tuple[str, str],
                score_label: str, score_range: tuple[float, float] | None = None) -> Path:
    """Losses (left) and scores (right) against the step, written to `path` atomically (PNG). Every job's
    curves.png is drawn here; the jobs only choose the curves."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: the figure only goes to a file
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for axis, curves in ((left, losses), (right, scores)):
        for curve in curves:
            axis.plot(curve.steps, curve.values, curve.style, label=curve.label, alpha=curve.alpha)
    left.set(xlabel="step", ylabel="loss", title=titles[0])
    right.set(xlabel="step", ylabel=score_label, title=titles[1])
    if score_range is not None:
        right.set_ylim(*score_range)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    fig.tight_layout()
    path = Path(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_pretraining_curves(records: list[dict], path: str | Path, *, title: str) -> Path:
    """Pre-training: training loss and held-out loss (left), held-out MLM/NSP accuracy (right)."""
    train = [r for r in records if r["split"] == "train"]
    heldout = [r for r in records if r["split"] == "heldout"]
    steps = [r["step"] for r in heldout]
    losses = [Curve("train loss (MLM + NSP)", [r["step"] for r in train], [r["loss"] for r in train], alpha=0.8)
              ] if train else []
    scores = []
    if heldout:
        losses.append(Curve("held-out loss", steps, [r["loss"] for r in heldout], "o-"))
        scores.append(Curve("MLM accuracy", steps, [r["mlm_accuracy"] for r in heldout], "o-"))
        if any(r.get("nsp_accuracy") is not None for r in heldout):
            scores.append(Curve("NSP accuracy", steps, [r.get("nsp_accuracy") for r in heldout], "s-"))
    return plot_curves(path, losses=losses, scores=scores,
                       titles=(f"{title}: loss", "held-out accuracy"), score_label="accuracy", score_range=(0, 1))


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
