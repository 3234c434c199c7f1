"""The ablation's report: one table (markdown + CSV) and one plot comparing the variants with each other,
with the no-pre-training floor and with the paper's Table 5.

A row is a dict: {"variant": Variant, "pretrain": its pre-training summary, "parameters": int,
"tasks": {task: {"metrics": {...}, "std": {...}}}}.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from bertforge.files import write_text_atomic

# BERT-base dev results of the paper's Table 5 (MRPC is accuracy there; SQuAD v1.1 is F1).
PAPER_TABLE5 = {
    "bert": {"sst2": 92.7, "mrpc": 86.7, "squad": 88.5},
    "no_nsp": {"sst2": 92.6, "mrpc": 86.5, "squad": 87.9},
    "ltr": {"sst2": 92.1, "mrpc": 77.5, "squad": 77.8},
    "ltr_bilstm": {"sst2": 91.6, "mrpc": 75.7, "squad": 84.9},
}

PERCENT_METRICS = {"squad"}  # tasks whose metrics are already x 100 (the official SQuAD script's scale)
TASK_COLUMNS = {  # task -> [(metric key, column title)]
    "sst2": [("accuracy", "SST-2 acc")],
    "stsb": [("spearman", "STS-B Spearman")],
    "mrpc": [("f1", "MRPC F1"), ("accuracy", "MRPC acc")],
    "squad": [("exact_match", "SQuAD EM"), ("f1", "SQuAD F1")],
    "ner": [("f1", "NER F1")],
}


def score(task: str, value: float) -> float:
    """A metric on the 0-100 scale."""
    return value if task in PERCENT_METRICS else 100 * value


def table_rows(rows: list[dict], tasks: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "objective", "positions", "preset", "parameters", "pre-training tokens",
              "held-out MLM acc", "held-out MLM ppl", "held-out NSP acc"]
    for task in tasks:
        header += [title for _, title in TASK_COLUMNS[task]]
    in_paper = [t for t in tasks if t in PAPER_TABLE5["bert"]]  # NER is not in the paper's Table 5
    header += [f"paper {TASK_COLUMNS[t][-1][1] if t != 'mrpc' else 'MRPC acc'}" for t in in_paper]
    body = []
    for row in rows:
        variant, heldout = row["variant"], row["pretrain"]["heldout"]
        lm = variant.objective == "ltr"
        cells = [variant.label, variant.objective, variant.position, variant.preset, f"{row['parameters']:,}",
                 f"{row['pretrain']['tokens']:,}",
                 "—" if lm or "mlm_accuracy" not in heldout else f"{100 * heldout['mlm_accuracy']:.1f}",
                 "—" if "mlm_loss" not in heldout
                 else f"{math.exp(heldout['mlm_loss']):.1f}" + (" (next-token)" if lm else ""),
                 f"{100 * heldout['nsp_accuracy']:.1f}" if heldout.get("nsp_accuracy") is not None else "—"]
        for task in tasks:
            result = row["tasks"].get(task, {})
            metrics, std = result.get("metrics", {}), result.get("std", {})
            cells += [("—" if key not in metrics else f"{score(task, metrics[key]):.1f}" +
                       (f" ± {score(task, std[key]):.1f}" if key in std else "")) for key, _ in TASK_COLUMNS[task]]
        paper = PAPER_TABLE5.get(variant.name, {})
        cells += [f"{paper[t]:.1f}" if t in paper else "" for t in in_paper]
        body.append(cells)
    return header, body


def write_report(rows: list[dict], tasks: Sequence[str], report_dir: Path, preamble: str) -> dict[str, Path]:
    header, body = table_rows(rows, tasks)
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = [preamble, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    paths = {"markdown": report_dir / "ablation.md", "csv": report_dir / "ablation.csv",
             "plot": report_dir / "ablation.png"}
    write_text_atomic(paths["markdown"], "\n".join(lines) + "\n")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(body)
    plot(rows, tasks, paths["plot"])
    return paths


def plot(rows: list[dict], tasks: Sequence[str], path: Path) -> Path:
    """One panel per task (its main metric), one bar per variant, the paper's figure as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = {"sst2": ("accuracy", "SST-2 dev accuracy"), "stsb": ("spearman", "STS-B dev Spearman"),
            "mrpc": ("accuracy", "MRPC dev accuracy"),
            "squad": ("f1", "SQuAD v1.1 (agreed split) F1"), "ner": ("f1", "CoNLL-2003 NER F1 (validation)")}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 0.45 * len(rows) + 1.9), sharey=True,
                             squeeze=False)
    labels = [row["variant"].label for row in rows]
    positions = range(len(rows))
    for ax, task in zip(axes[0], tasks, strict=True):
        key, title = main[task]
        values = [score(task, row["tasks"].get(task, {}).get("metrics", {}).get(key, float("nan"))) for row in rows]
        errors = [score(task, row["tasks"].get(task, {}).get("std", {}).get(key, 0.0)) for row in rows]
        ax.barh(list(positions), values, color="#4C72B0", xerr=errors if any(errors) else None, capsize=3)
        for y, value in zip(positions, values, strict=True):
            if not math.isnan(value):
                ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
        paper = [PAPER_TABLE5.get(row["variant"].name, {}).get(task) for row in rows]
        marked = [(p, y) for y, p in zip(positions, paper, strict=True) if p is not None]
        if marked:
            ax.scatter([p for p, _ in marked], [y for _, y in marked], marker="|", s=200, color="#C44E52",
                       label="paper (BERT-base)", zorder=3)
        floor = [v for row, v in zip(rows, values, strict=True) if not row["variant"].pretrained]
        if floor and not math.isnan(floor[0]):
            ax.axvline(floor[0], color="0.4", linestyle="--", linewidth=1, label="no pre-training")
        ax.set_title(title, fontsize=10)
        shown = [v for v in values + [p for p, _ in marked] if not math.isnan(v)]
        low = max(0, 10 * math.floor((min(shown, default=0) - 3) / 10))  # zoom in: the differences are small
        ax.set_xlim(low, 100)
    axes[0][0].set_yticks(list(positions), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    if handles:  # one legend for every panel, under them
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.35 / fig.get_figheight())
        fig.legend(handles, names, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
