"""`bertforge ablate`: the paper's ablations in miniature, with one command.

Every variant is pre-trained from scratch on the same corpus, token budget and seed, then fine-tuned on
the same downstream tasks with the same recipe, and one table (markdown + CSV) and one plot compare them:

- objectives (BERT §5.1, Table 5): MLM + NSP (BERT), MLM only ("No NSP"), a left-to-right LM without NSP
  ("LTR & No NSP", fine-tuned left to right too, as the paper does), and the same LTR model with a randomly
  initialised BiLSTM on top for fine-tuning ("+ BiLSTM");
- positions: BERT's learned absolute positions against sinusoidal, relative_key, relative_key_query,
  rotary (RoPE), ALiBi and none at all;
- model size (§5.2, Table 6): the presets tiny -> mini -> small at equal tokens, held-out MLM perplexity
  and downstream scores.

The run folder is resumable: a finished pre-training or fine-tuning is skipped when its settings match,
an interrupted pre-training continues from its last checkpoint. Shapes: B = batch, T = tokens, H = hidden.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bertforge.files import write_text_atomic
from bertforge.model.encoder import BertOutput
from bertforge.model.pooler import last_real_token

log = logging.getLogger(__name__)

DATA = Path("../shared/data")


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table. `pretrain_as` names the variant whose pre-trained model it reuses."""

    name: str
    label: str
    objective: str = "mlm_nsp"
    position: str = "learned"
    preset: str = "tiny"
    bilstm: bool = False
    pretrain_as: str | None = None
    pretrained: bool = True  # False: fine-tune the randomly initialised model (the "no pre-training" floor)

    @property
    def pretrain_name(self) -> str:
        return self.pretrain_as or self.name


VARIANTS: dict[str, list[Variant]] = {
    "objectives": [
        Variant("bert", "MLM + NSP (BERT)"),
        Variant("no_nsp", "No NSP (MLM only)", objective="mlm"),
        Variant("ltr", "LTR & No NSP", objective="ltr"),
        Variant("ltr_bilstm", "LTR & No NSP + BiLSTM", objective="ltr", bilstm=True, pretrain_as="ltr"),
        Variant("scratch", "no pre-training (random init)", pretrained=False),
    ],
    "positions": [
        Variant(f"pos_{scheme}", f"positions: {scheme}", position=scheme)
        for scheme in ("sinusoidal", "relative_key", "relative_key_query", "rope", "alibi", "none")
    ],
    "sizes": [
        Variant("size_mini", "size: mini (4L, H=256)", preset="mini"),
        Variant("size_small", "size: small (4L, H=512)", preset="small"),
    ],
}

# BERT-base dev results of the paper's Table 5 (MRPC is accuracy there; SQuAD v1.1 is F1).
PAPER_TABLE5 = {
    "bert": {"sst2": 92.7, "mrpc": 86.7, "squad": 88.5},
    "no_nsp": {"sst2": 92.6, "mrpc": 86.5, "squad": 87.9},
    "ltr": {"sst2": 92.1, "mrpc": 77.5, "squad": 77.8},
    "ltr_bilstm": {"sst2": 91.6, "mrpc": 75.7, "squad": 84.9},
}


# ----- fine-tuning modules the ablation needs -----------------------------------------------------
class LeftToRight(nn.Module):
    """Runs a task model's encoder left to right (causal attention) at fine-tuning too: the paper keeps
    the left-only constraint there, since removing it would mismatch pre-training. The pooled output is
    then the last real token's state, the only one that has seen the whole input."""

    def __init__(self, task_model: nn.Module) -> None:
        super().__init__()
        self.task_model = task_model
        self.config = task_model.config

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **encoder_flags):
        return self.task_model(input_ids, attention_mask, token_type_ids, causal=True, **encoder_flags)


class BiLSTMOnTop(nn.Module):
    """An encoder followed by a randomly initialised one-layer BiLSTM (H/2 units each way, so the task
    head keeps its input size): the paper's "+ BiLSTM" row, which gives an LTR model right context.

    The pooled output joins the forward direction at the last real token and the backward direction at
    the first token: both have read the whole input."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        if hidden % 2:
            raise ValueError(f"BiLSTMOnTop needs an even hidden size, got {hidden}")
        self.encoder = encoder
        self.config = encoder.config
        self.lstm = nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **encoder_flags) -> BertOutput:
        enc = self.encoder(input_ids, attention_mask, token_type_ids, **encoder_flags)
        x = enc.sequence_output  # [B, T, H]
        batch, seq_len, hidden = x.shape
        lengths = attention_mask.sum(dim=1) if attention_mask is not None else torch.full((batch,), seq_len)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = self.lstm(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=seq_len)  # [B, T, H]
        half = hidden // 2
        pooled = torch.cat([last_real_token(states, attention_mask)[:, :half], states[:, 0, half:]], dim=-1)
        return BertOutput(sequence_output=states, pooled_output=pooled, hidden_states=enc.hidden_states,
                          attentions=enc.attentions)


# ----- settings -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PretrainSettings:
    budget_tokens: int
    max_seq_length: int = 128
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0

    @property
    def steps(self) -> int:
        return max(1, self.budget_tokens // (self.batch_size * self.max_seq_length))


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 1e-4
    seed: int = 42
    sst2_examples: int = 8000
    squad_train_questions: int = 2000
    squad_eval_questions: int = 1000
    squad_max_seq_length: int = 256
    squad_doc_stride: int = 128


def parse_tokens(budget: str | int) -> int:
    """'4M' -> 4_000_000, '500k' -> 500_000, '2e6' -> 2_000_000."""
    text = str(budget).strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}.get(text[-1:], 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise ValueError(f"budget {budget!r} is not a token count; write e.g. 4M, 500k or 2000000") from None
    if value < 1:
        raise ValueError(f"budget must be at least 1 token, got {budget!r}")
    return int(value)


# ----- the corpus ---------------------------------------------------------------------------------
def prepare(corpus: Sequence[Path], output_dir: Path, *, max_documents: int, vocab_size: int):
    """The first `max_documents` documents -> a WordPiece vocabulary of `vocab_size` -> shards (cached)."""
    from bertforge.data.corpus import corpus_files, iter_documents
    from bertforge.data.shards import PreparedCorpus, prepare_corpus
    from bertforge.tokenizer import BertTokenizer

    data_dir = output_dir / "data"
    wanted = {"corpus": [str(c) for c in corpus], "max_documents": max_documents, "vocab_size": vocab_size}
    settings_file = output_dir / "corpus.json"
    if (data_dir / "meta.json").is_file():
        if settings_file.is_file():
            held = json.loads(settings_file.read_text(encoding="utf-8"))
            if held != wanted:
                raise ValueError(f"{settings_file}: this run folder's corpus was prepared with {held}, not {wanted}; "
                                 "every variant must see the same corpus, so pass a new --output-dir (or the old "
                                 "settings)")
        return PreparedCorpus.open(data_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    text_file = output_dir / "corpus.txt"
    if not text_file.is_file():
        documents = []
        for i, document in enumerate(iter_documents(corpus_files(corpus))):
            if i >= max_documents:
                break
            documents.append("\n".join(document))
        write_text_atomic(text_file, "\n\n".join(documents) + "\n")
    count = text_file.read_text(encoding="utf-8").count("\n\n") + 1
    tokenizer = BertTokenizer.train([text_file], vocab_size=vocab_size)
    write_text_atomic(settings_file, json.dumps(wanted, indent=2) + "\n")
    # ~2% of the documents held out (at least one in 5 for a small corpus) for the perplexity column.
    return prepare_corpus([text_file], data_dir, tokenizer, heldout_every=min(50, max(5, count // 10)),
                          progress=False, shard_tokens=1 << 22)


# ----- one variant --------------------------------------------------------------------------------
def pretrain(variant: Variant, data_dir: Path, run_dir: Path, settings: PretrainSettings, threads: int | None) -> dict:
    """Pre-train (or resume, or skip when done) one variant; returns its held-out metrics and cost."""
    from bertforge.training.pretrain import PretrainConfig, train

    summary_file = run_dir / "summary.json"
    wanted = {"objective": variant.objective, "position": variant.position, "preset": variant.preset,
              **dataclasses.asdict(settings)}
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if summary.get("settings") == wanted:
            return summary
    steps = settings.steps if variant.pretrained else 0
    cfg = PretrainConfig(
        data=data_dir, output_dir=run_dir, preset=variant.preset, objective=variant.objective,
        model_overrides={"position_embedding_type": variant.position}, max_length=settings.max_seq_length,
        batch_size=settings.batch_size, steps=steps, learning_rate=settings.lr, warmup_steps=max(1, steps // 10),
        dropout=0.0, seed=settings.seed, eval_every=max(1, steps // 4), eval_batches=20, log_every=max(1, steps // 50),
        save_every=max(1, steps // 4), resume=True, threads=threads, progress=False, tensorboard=False,
    )
    started = time.perf_counter()
    if not variant.pretrained:
        return _untrained(cfg, data_dir, run_dir, wanted, summary_file)
    result = train(cfg)
    final = result.evaluations[max(result.evaluations)]
    summary = {"settings": wanted, "steps": result.step, "tokens": result.step * settings.batch_size *
               settings.max_seq_length, "seconds": round(time.perf_counter() - started, 1),
               "heldout": final, "model_dir": str(result.model_dir)}
    write_text_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    return summary


def _untrained(cfg, data_dir: Path, run_dir: Path, wanted: dict, summary_file: Path) -> dict:
    """The model exactly as pre-training would start it (same preset, vocabulary and seed), saved untrained."""
    from bertforge.data.shards import PreparedCorpus
    from bertforge.training.pretrain import build_model, export_model

    tokenizer = PreparedCorpus.open(data_dir).tokenizer()
    torch.manual_seed(cfg.seed)
    model_dir = export_model(build_model(cfg, tokenizer.vocab_size), run_dir / "model", tokenizer)
    summary = {"settings": wanted, "steps": 0, "tokens": 0, "seconds": 0.0, "heldout": {}, "model_dir": str(model_dir)}
    write_text_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    return summary


def task_data(task_name: str, task, data_root: Path, settings: FinetuneSettings) -> tuple[list, list]:
    """(training examples, evaluation examples): SST-2 and MRPC train/dev, SQuAD v1.1 on the agreed split."""
    if task_name == "sst2":
        return (task.read(data_root / "glue" / "SST-2" / "train.tsv")[: settings.sst2_examples],
                task.read(data_root / "glue" / "SST-2" / "dev.tsv"))
    if task_name == "mrpc":
        return task.read(data_root / "glue" / "MRPC" / "train.tsv"), task.read(data_root / "glue" / "MRPC" / "dev.tsv")
    if task_name == "squad":
        from bertforge.tasks.qa import agreed_split

        train, evaluation = agreed_split(task.read(data_root / "squad" / "dev-v1.1.reconstructed.json"))
        return train[: settings.squad_train_questions], evaluation[: settings.squad_eval_questions]
    raise ValueError(f"unknown ablation task {task_name!r}; choose from sst2, mrpc, squad")


def finetune(variant: Variant, model_dir: Path, task_name: str, data_root: Path, settings: FinetuneSettings,
             result_file: Path) -> dict:
    """Fine-tune one pre-trained variant on one task; returns the best epoch's evaluation (cached)."""
    from bertforge.checkpoint import load_model
    from bertforge.tasks.registry import family
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.finetune_loop import EvalSet, TrainSettings, seed_everything, train

    wanted = {"variant": dataclasses.asdict(variant), **dataclasses.asdict(settings)}
    if result_file.is_file():
        cached = json.loads(result_file.read_text(encoding="utf-8"))
        if _same_settings(cached.get("settings"), wanted):
            return cached
    squad = task_name == "squad"
    max_seq_length = settings.squad_max_seq_length if squad else 128
    task = family(task_name, doc_stride=settings.squad_doc_stride)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    train_examples, eval_examples = task_data(task_name, task, data_root, settings)
    task.fit_labels(train_examples)
    train_features = task.features(train_examples, tokenizer, max_seq_length=max_seq_length, train=True)
    eval_set = EvalSet("dev", eval_examples, task.features(eval_examples, tokenizer, max_seq_length=max_seq_length))

    seed_everything(settings.seed)
    net = load_model(model_dir, task.model_class, **task.model_kwargs())
    if variant.bilstm:
        net.bert = BiLSTMOnTop(net.bert)
    if variant.objective == "ltr":
        net = LeftToRight(net)
    started = time.perf_counter()
    training = TrainSettings(epochs=settings.epochs, batch_size=settings.batch_size,
                             learning_rate=settings.learning_rate, seed=settings.seed)
    result = train(net, task, train_features, [eval_set], pad_id=tokenizer.pad_id, settings=training, progress=False)
    best = result.history[result.best_epoch - 1]
    record = {"settings": wanted, "task": task_name, "train_examples": len(train_examples),
              "eval_examples": len(eval_examples), "best_epoch": result.best_epoch,
              "seconds": round(time.perf_counter() - started, 1),
              "metrics": {k.split("/", 1)[1]: v for k, v in best.items() if k.startswith("dev/")}}
    write_text_atomic(result_file, json.dumps(record, indent=2) + "\n")
    return record


def over_seeds(records: list[dict]) -> dict:
    """Fine-tuning results of one task over seeds: mean and (sample) standard deviation of every metric."""
    keys = [k for k, v in records[0]["metrics"].items() if isinstance(v, float)]
    mean = {k: sum(r["metrics"][k] for r in records) / len(records) for k in keys}
    std = {k: math.sqrt(sum((r["metrics"][k] - mean[k]) ** 2 for r in records) / (len(records) - 1))
           for k in keys} if len(records) > 1 else {}
    return {"metrics": mean, "std": std, "seeds": [r["settings"]["seed"] for r in records]}


def _same_settings(cached: dict | None, wanted: dict) -> bool:
    """A cached result still answers `wanted` when only Variant fields added since, at their defaults, differ."""
    if not cached:
        return False
    defaults = {f.name: f.default for f in dataclasses.fields(Variant)}
    held = dict(cached.get("variant", {}))
    for name, value in wanted["variant"].items():
        if name not in held and value == defaults.get(name, dataclasses.MISSING):
            held[name] = value
    return {**cached, "variant": held} == wanted


# ----- the table and the plot ---------------------------------------------------------------------
PERCENT_METRICS = {"squad"}  # tasks whose metrics are already x 100 (the official SQuAD script's scale)
TASK_COLUMNS = {  # task -> [(metric key, column title)]
    "sst2": [("accuracy", "SST-2 acc")],
    "mrpc": [("f1", "MRPC F1"), ("accuracy", "MRPC acc")],
    "squad": [("exact_match", "SQuAD EM"), ("f1", "SQuAD F1")],
}


def score(task: str, value: float) -> float:
    """A metric on the 0-100 scale."""
    return value if task in PERCENT_METRICS else 100 * value


def table_rows(rows: list[dict], tasks: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "objective", "positions", "preset", "parameters", "pre-training tokens",
              "held-out MLM acc", "held-out MLM ppl", "held-out NSP acc"]
    for task in tasks:
        header += [title for _, title in TASK_COLUMNS[task]]
    header += [f"paper {TASK_COLUMNS[t][-1][1] if t != 'mrpc' else 'MRPC acc'}" for t in tasks]
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
        cells += [f"{paper[t]:.1f}" if t in paper else "" for t in tasks]
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

    main = {"sst2": ("accuracy", "SST-2 dev accuracy"), "mrpc": ("accuracy", "MRPC dev accuracy"),
            "squad": ("f1", "SQuAD v1.1 (agreed split) F1")}
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


# ----- the job ------------------------------------------------------------------------------------
def run(
    output_dir: Path = Path("runs/ablate"),
    budget: str = "2M",
    groups: list[str] | None = None,
    variants: list[str] | None = None,
    tasks: list[str] | None = None,
    files: list[Path] | None = None,
    max_documents: int = 2000,
    vocab_size: int = 8000,
    data_root: Path = DATA,
    max_length: int = 128,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    finetune_epochs: float = 3.0,
    finetune_batch_size: int = 32,
    finetune_learning_rate: float = 1e-4,
    sst2_examples: int = 8000,
    squad_train_questions: int = 2000,
    squad_eval_questions: int = 1000,
    finetune_seeds: list[int] | None = None,
    report_dir: Path | None = None,
    threads: int | None = None,
) -> Path:
    """Pre-train each variant on the same corpus, token budget and seed; fine-tune each on the same tasks;
    write ablation.md, ablation.csv and ablation.png.

    Args:
        output_dir: Run folder (resumable): data/, pretrain/<variant>/, finetune/<variant>/<task>.json.
        budget: Pre-training tokens per variant (padding included), e.g. 2M, 500k; steps = budget / (batch x length).
        groups: Which groups of variants: objectives (Table 5), positions, sizes (Table 6). Default: all.
        variants: Or name the variants (e.g. bert no_nsp ltr ltr_bilstm pos_rope size_mini).
        tasks: Downstream tasks among sst2, mrpc, squad (default: all three).
        files: Text files or folders (default: the shared Wikipedia dump).
        max_documents: Documents of the corpus used (every 50th held out for evaluation).
        vocab_size: WordPiece vocabulary trained on those documents.
        data_root: Folder holding glue/SST-2, glue/MRPC and squad/ (the shared data).
        max_length: Pre-training sequence length.
        batch_size: Pre-training batch size.
        learning_rate: Peak pre-training learning rate (AdamW, 10% warm-up, linear decay).
        seed: Seed of every pre-training (weights, pairs, masks).
        finetune_epochs: Fine-tuning epochs (the best epoch on dev is reported).
        finetune_batch_size: Fine-tuning batch size.
        finetune_learning_rate: Peak fine-tuning learning rate.
        sst2_examples: First N SST-2 training sentences.
        squad_train_questions: First N questions of the 35 training articles of the agreed SQuAD split.
        squad_eval_questions: First N questions of the 13 evaluation articles.
        finetune_seeds: Fine-tune every variant once per seed (default: 42 alone); with several, the table shows
            mean ± standard deviation, the noise any difference between rows must beat.
        report_dir: Where the table and the plot go (default: output_dir).
        threads: CPU threads for torch.
    """
    if threads:
        torch.set_num_threads(threads)
    output_dir, data_root = Path(output_dir), Path(data_root)
    chosen = choose_variants(groups, variants)
    tasks = list(tasks or ["sst2", "mrpc", "squad"])
    unknown = [t for t in tasks if t not in TASK_COLUMNS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASK_COLUMNS)}")
    pre = PretrainSettings(parse_tokens(budget), max_length, batch_size, learning_rate, seed)
    fine = FinetuneSettings(finetune_epochs, finetune_batch_size, finetune_learning_rate, sst2_examples=sst2_examples,
                            squad_train_questions=squad_train_questions, squad_eval_questions=squad_eval_questions)
    prepared = prepare(files or [data_root / "wikipedia"], output_dir, max_documents=max_documents,
                       vocab_size=vocab_size)
    counts = prepared.meta["counts"]
    print(f"corpus: {counts['train']['tokens']:,} training tokens ({counts['train']['documents']:,} documents), "
          f"{counts['heldout']['tokens']:,} held out; each variant: {pre.steps} steps x {batch_size} x "
          f"{max_length} = {pre.steps * batch_size * max_length:,} tokens")

    finetune_seeds = list(finetune_seeds or [FinetuneSettings.seed])
    rows = []
    for variant in chosen:
        print(f"[{variant.name}] pre-training: objective {variant.objective}, positions {variant.position}, "
              f"preset {variant.preset}")
        summary = pretrain(variant, prepared.directory, output_dir / "pretrain" / variant.pretrain_name, pre, threads)
        model_dir = Path(summary["model_dir"])
        row = {"variant": variant, "pretrain": summary, "parameters": _parameters(model_dir), "tasks": {}}
        print(f"[{variant.name}] held-out: {summary['heldout']}")
        for task in tasks:
            records = []
            for finetune_seed in finetune_seeds:
                name = f"{task}.json" if finetune_seed == FinetuneSettings.seed else f"{task}-seed{finetune_seed}.json"
                seeded = dataclasses.replace(fine, seed=finetune_seed)
                records.append(finetune(variant, model_dir, task, data_root, seeded,
                                        output_dir / "finetune" / variant.name / name))
                print(f"[{variant.name}] {task} (seed {finetune_seed}): " + ", ".join(
                    f"{k} {score(task, v):.2f}" for k, v in records[-1]["metrics"].items() if isinstance(v, float)))
            row["tasks"][task] = over_seeds(records)
        rows.append(row)
        preamble = _preamble(pre, fine, prepared, budget, finetune_seeds, tasks)
        paths = write_report(rows, tasks, Path(report_dir or output_dir), preamble)  # updated after every row
    print(f"table: {paths['markdown']} and {paths['csv']}; plot: {paths['plot']}")
    print(paths["markdown"].read_text(encoding="utf-8"))
    return paths["markdown"]


def choose_variants(groups: list[str] | None, names: list[str] | None) -> list[Variant]:
    everything = {v.name: v for group in VARIANTS.values() for v in group}
    if names:
        unknown = [n for n in names if n not in everything]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(everything)}")
        chosen = [everything[n] for n in names]
    else:
        groups = groups or list(VARIANTS)
        unknown = [g for g in groups if g not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown group(s) {unknown}; choose from {', '.join(VARIANTS)}")
        chosen = [v for g in groups for v in VARIANTS[g]]
    # Every table needs its reference row: BERT (MLM + NSP, learned positions, tiny).
    if "bert" not in [v.name for v in chosen]:
        chosen.insert(0, everything["bert"])
    # A reused pre-training needs its owner to be run first.
    for v in list(chosen):
        if v.pretrain_as and v.pretrain_as not in [c.name for c in chosen]:
            chosen.insert(chosen.index(v), everything[v.pretrain_as])
    return chosen


def _parameters(model_dir: Path) -> int:
    from bertforge.checkpoint import read_weights

    state, _ = read_weights(model_dir)
    return sum(t.numel() for t in state.values())


def _preamble(pre: PretrainSettings, fine: FinetuneSettings, prepared, budget: str, seeds: Sequence[int],
              tasks: Sequence[str]) -> str:
    counts = prepared.meta["counts"]
    seeding = (f"seed {seeds[0]}" if len(seeds) == 1 else
               f"seeds {', '.join(map(str, seeds))} (mean ± standard deviation)")
    data = {"sst2": f"SST-2 first {fine.sst2_examples:,} training sentences, dev 872",
            "mrpc": "MRPC train/dev",
            "squad": f"SQuAD v1.1 agreed split, first {fine.squad_train_questions:,} training / "
                     f"{fine.squad_eval_questions:,} evaluation questions, length {fine.squad_max_seq_length}, "
                     f"stride {fine.squad_doc_stride}"}
    return (f"Pre-training: {pre.steps} steps x {pre.batch_size} x {pre.max_seq_length} tokens "
            f"(budget {budget}) per variant on {counts['train']['tokens']:,} corpus tokens, lr {pre.lr}, seed "
            f"{pre.seed}, vocabulary {prepared.tokenizer().vocab_size:,}. Fine-tuning: {fine.epochs:g} epochs, "
            f"batch {fine.batch_size}, lr {fine.learning_rate}, {seeding}; "
            + "; ".join(data[t] for t in tasks) + ". Best epoch on dev reported. "
            "Held-out perplexity of the LTR model is next-token perplexity, not comparable with MLM's.")
