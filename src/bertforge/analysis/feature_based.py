"""Feature-based NER (BERT §5.3, Table 7): the encoder stays frozen and only a small tagger learns.

Every sentence goes through the encoder once (eval mode, no gradients) and all of its hidden states are
kept: the embedding output h_0 and the output of every layer h_1 … h_L. For each strategy a randomly
initialised tagger is then trained on those cached features alone:

    features of the strategy's layers -> 2-layer BiLSTM -> dropout -> linear over the NER tags

The strategies are the rows of the paper's Table 7. The weighted sums are ELMo's scalar mix (Peters et
al. 2018, eq. 1): gamma · Σ_j softmax(s)_j · h_j, with the scalars s and the scale gamma learned with the
tagger. "Last four" means h_{L-3} … h_L, so for a 6-layer model such as MiniLM it is layers 3-6, and
"all" means the L Transformer layers (the paper's "all 12 layers" of BERT-base), not the embeddings.

Tokens, labels and scores are those of `bertforge finetune --task ner` (tasks/ner.py): a word's tag sits on
its first WordPiece, the other pieces take no loss, and F1 is conlleval's entity F1, so the numbers sit
beside a fine-tuning run's.
Shapes: B = batch, K = layers a strategy uses, T = longest sequence in the batch, H = hidden size,
C = tags, N = layers kept per feature (L + 1).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bertforge.errors import BertforgeError
from bertforge.model import BertModel
from bertforge.tasks.base import IGNORE_INDEX, Feature, collate
from bertforge.tasks.ner import TokenClassification
from bertforge.training.finetune_loop import length_grouped_batches
from bertforge.training.optim import clip_gradients

log = logging.getLogger(__name__)

STRATEGY_NAMES = ("embeddings", "last", "second_to_last", "weighted_sum_all", "weighted_sum_last4", "concat_last4")
# BERT-base dev F1 on CoNLL-2003, BERT Table 7 (the paper's strategy names as the comment).
PAPER_TABLE7 = {
    "fine-tuning": 96.4,
    "embeddings": 91.0,  # Embeddings
    "second_to_last": 95.6,  # Second-to-Last Hidden
    "last": 94.9,  # Last Hidden
    "weighted_sum_last4": 95.9,  # Weighted Sum Last Four Hidden
    "concat_last4": 96.1,  # Concat Last Four Hidden
    "weighted_sum_all": 95.5,  # Weighted Sum All 12 Layers
}


class FeatureBasedError(BertforgeError, ValueError):
    """A strategy or setting this model cannot use."""


@dataclass(frozen=True)
class Strategy:
    """Which hidden states (0 = embeddings, L = last layer) a tagger reads, and how it combines them."""

    name: str
    layers: tuple[int, ...]
    combine: str  # "one", "weighted_sum" or "concat"

    def describe(self) -> str:
        names = ["emb" if i == 0 else str(i) for i in self.layers]
        return {"one": names[0], "weighted_sum": "mix of " + ",".join(names),
                "concat": "concat " + ",".join(names)}[self.combine]


def strategy(name: str, num_layers: int) -> Strategy:
    """The Table 7 strategy `name` for an encoder of `num_layers` layers."""
    last = num_layers
    choices = {
        "embeddings": ((0,), "one"),
        "last": ((last,), "one"),
        "second_to_last": ((last - 1,), "one"),
        "weighted_sum_all": (tuple(range(1, last + 1)), "weighted_sum"),
        "weighted_sum_last4": (tuple(range(last - 3, last + 1)), "weighted_sum"),
        "concat_last4": (tuple(range(last - 3, last + 1)), "concat"),
    }
    if name not in choices:
        raise FeatureBasedError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")
    layers, combine = choices[name]
    needed = 4 if name.endswith("last4") else 2 if name == "second_to_last" else 1
    if num_layers < needed:
        raise FeatureBasedError(f"strategy {name!r} needs an encoder of at least {needed} layers; "
                                f"this one has {num_layers}")
    return Strategy(name, layers, combine)


# ----- the tagger ---------------------------------------------------------------------------------
class ScalarMix(nn.Module):
    """ELMo's learned layer combination: gamma · Σ_j softmax(s)_j · h_j (uniform weights, gamma 1 at start)."""

    def __init__(self, num_inputs: int) -> None:
        super().__init__()
        self.scalars = nn.Parameter(torch.zeros(num_inputs))
        self.gamma = nn.Parameter(torch.ones(()))

    def weights(self) -> torch.Tensor:
        return self.scalars.softmax(-1)  # [K]

    def forward(self, states: torch.Tensor) -> torch.Tensor:  # [B, K, T, H] -> [B, T, H]
        return self.gamma * torch.einsum("k,bkth->bth", self.weights(), states)


def combine_layers(states: torch.Tensor, combine: str, mix: ScalarMix | None = None) -> torch.Tensor:
    """[B, K, T, H] -> [B, T, H] (one layer, or the weighted sum) or [B, T, K·H] (concatenation, in layer order)."""
    if combine == "one":
        return states[:, 0]
    if combine == "weighted_sum":
        return mix(states)
    batch, layers, length, hidden = states.shape
    return states.permute(0, 2, 1, 3).reshape(batch, length, layers * hidden)  # [B, T, K·H]


class FeatureTagger(nn.Module):
    """Frozen-BERT features -> 2-layer BiLSTM -> dropout -> linear over the tags (BERT §5.3)."""

    def __init__(self, plan: Strategy, *, hidden_size: int, num_labels: int, lstm_hidden: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.plan = plan
        self.mix = ScalarMix(len(plan.layers)) if plan.combine == "weighted_sum" else None
        width = hidden_size * len(plan.layers) if plan.combine == "concat" else hidden_size
        self.lstm = nn.LSTM(width, lstm_hidden, num_layers=2, bidirectional=True, batch_first=True,
                            dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * lstm_hidden, num_labels)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """states: [B, K, T, H] (the strategy's layers, zero-padded), lengths: [B] -> logits [B, T, C]."""
        x = self.dropout(combine_layers(states, self.plan.combine, self.mix))  # [B, T, H or K·H]
        # Packed: the backward direction starts at each sentence's own [SEP], not at the padding.
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])  # [B, T, 2·lstm_hidden]
        return self.classifier(self.dropout(out))  # [B, T, C]


# ----- features, once ------------------------------------------------------------------------------
@torch.no_grad()
def extract_hidden_states(encoder: BertModel, features: Sequence[Feature], *, pad_id: int, batch_size: int = 32,
                          dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:
    """Every hidden state of every feature, [N, T_i, H] each (in feature order), from the frozen encoder."""
    encoder.eval().requires_grad_(False)
    order = sorted(range(len(features)), key=lambda i: -features[i].length)  # little padding per batch
    states: list = [None] * len(features)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        batch = collate([features[i] for i in chosen], pad_id)
        hidden = torch.stack(encoder(**batch, output_hidden_states=True).hidden_states, 1)  # [B, N, T, H]
        for row, i in enumerate(chosen):
            states[i] = hidden[row, :, : features[i].length].to(dtype).clone()  # [N, T_i, H]
    return states


def _batch(states: Sequence[torch.Tensor], features: Sequence[Feature], chosen: Sequence[int],
           layers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen features' layers padded with zeros: states [B, K, T, H], lengths [B], labels [B, T]."""
    lengths = torch.tensor([features[i].length for i in chosen])
    first = states[chosen[0]]
    out = torch.zeros(len(chosen), len(layers), int(lengths.max()), first.shape[-1])
    labels = torch.full((len(chosen), out.shape[2]), IGNORE_INDEX, dtype=torch.long)
    index = torch.tensor(layers)
    for row, i in enumerate(chosen):
        out[row, :, : lengths[row]] = states[i][index].float()
        if features[i].label is not None:
            labels[row, : lengths[row]] = torch.tensor(features[i].label)
    return out, lengths, labels


# ----- training and prediction ----------------------------------------------------------------------
@dataclass
class HeadResult:
    strategy: Strategy
    metrics: dict
    mix_weights: list[float] | None = None
    gamma: float | None = None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


def train_tagger(tagger: FeatureTagger, states: Sequence[torch.Tensor], features: Sequence[Feature], *,
                 epochs: int, batch_size: int, learning_rate: float, seed: int, max_grad_norm: float = 5.0,
                 log_every: int = 0) -> list[dict]:
    """Adam on the tagger only, linear decay to zero, loss on first sub-tokens, batches of similar lengths;
    returns one record per epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(tagger.parameters(), lr=learning_rate)
    total = max(1, epochs * math.ceil(len(features) / batch_size))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    history = []
    for epoch in range(1, epochs + 1):
        tagger.train()
        batches = length_grouped_batches([f.length for f in features], batch_size, generator)
        running = 0.0
        for n, chosen in enumerate(batches, start=1):
            inputs, lengths, labels = _batch(states, features, chosen, tagger.plan.layers)
            logits = tagger(inputs, lengths)  # [B, T, C]
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(tagger.parameters(), max_grad_norm)
            optimizer.step()
            schedule.step()
            running += loss.item()
            if log_every and n % log_every == 0:
                log.info("%s epoch %d step %d/%d: loss %.4f", tagger.plan.name, epoch, n, len(batches), running / n)
        history.append({"epoch": epoch, "train_loss": running / max(len(batches), 1)})
    return history


@torch.no_grad()
def predict_logits(tagger: FeatureTagger, states: Sequence[torch.Tensor], features: Sequence[Feature], *,
                   batch_size: int = 64) -> list[np.ndarray]:
    """[T_i, C] logits per feature, in feature order: what `TokenClassification.evaluate` reads."""
    tagger.eval()
    order = sorted(range(len(features)), key=lambda i: -features[i].length)
    outputs: list = [None] * len(features)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        inputs, lengths, _ = _batch(states, features, chosen, tagger.plan.layers)
        logits = tagger(inputs, lengths).numpy()
        for row, i in enumerate(chosen):
            outputs[i] = logits[row, : lengths[row]]
    return outputs


# ----- the job ----------------------------------------------------------------------------------------
def finetune_f1(path: Path) -> dict | None:
    """f1/precision/recall from a fine-tuning result: a bench JSON ("bertforge" -> "metrics") or a
    `bertforge finetune` best_metrics.json ("<eval set>/f1" keys); None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    values = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(values.get("bertforge"), dict):
        values = values["bertforge"].get("metrics", {})
    if "f1" not in values:
        prefixes = [k[: -len("/f1")] for k in values if k.endswith("/f1")]
        if not prefixes:
            raise FeatureBasedError(f"{path}: no 'f1' or '<eval set>/f1' key; pass a best_metrics.json of "
                                    "`bertforge finetune --task ner` or a bench_finetune.py JSON")
        values = {k[len(prefixes[0]) + 1 :]: v for k, v in values.items() if k.startswith(prefixes[0] + "/")}
    return {k: float(values[k]) for k in ("f1", "precision", "recall") if k in values}


def results_table(results: Sequence[HeadResult], *, finetune: dict | None, finetune_source: str,
                  split: str) -> tuple[list[str], list[list[str]]]:
    """The rows of the comparison: strategy, layers, F1, precision, recall (× 100), the paper's figure."""
    header = ["strategy", "layers used", f"{split} F1", "precision", "recall", "BERT-base Table 7 (dev F1)",
              "learned softmax weights (gamma)"]
    rows = []
    if finetune is not None:
        rows.append(["fine-tuning (all weights)", f"all ({finetune_source})", *(f"{100 * finetune.get(k, math.nan):.1f}"
                     for k in ("f1", "precision", "recall")), f"{PAPER_TABLE7['fine-tuning']:.1f}", ""])
    else:
        rows.append(["fine-tuning (all weights)", f"pending ({finetune_source})", "", "", "",
                     f"{PAPER_TABLE7['fine-tuning']:.1f}", ""])
    for result in results:
        weights = ""
        if result.mix_weights is not None:
            weights = " ".join(f"{w:.2f}" for w in result.mix_weights) + f" ({result.gamma:.2f})"
        rows.append([result.strategy.name, result.strategy.describe(),
                     *(f"{100 * result.metrics[k]:.1f}" for k in ("f1", "precision", "recall")),
                     f"{PAPER_TABLE7[result.strategy.name]:.1f}", weights])
    return header, rows


@dataclass(frozen=True)
class FeatureSettings:
    """The frozen encoder and the sentences it turns into features.

    Args:
        model: A model directory, or all-minilm-l6-v2 (the packaged checkpoint).
        data_dir: The CoNLL-2003 folder with train.txt, valid.txt and test.txt.
        max_train_examples: Train on the first N sentences of train.txt; null = all.
        eval_split: Score on this file of data_dir: test (test.txt) or valid (valid.txt).
        max_length: Longest feature in WordPieces; longer sentences are split between words.
    """

    model: str = "all-minilm-l6-v2"
    data_dir: Path = Path("../shared/data/conll2003")
    max_train_examples: int | None = 4000
    eval_split: Literal["test", "valid"] = "test"
    max_length: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # the command line and YAML give a string


@dataclass(frozen=True)
class TaggerSettings:
    """The taggers trained on the features, one per strategy.

    Args:
        strategies: Which layers feed the tagger; any of embeddings, last, second_to_last, weighted_sum_all,
            weighted_sum_last4, concat_last4 (default: all six).
        epochs: Training epochs of each tagger.
        batch_size: Sentences per tagger update.
        learning_rate: Adam's peak learning rate (linear decay to zero).
        lstm_hidden: BiLSTM units per direction (the paper: 768 for H=768); default 2H/3 rounded to 64 (256 for H=384).
        dropout: Dropout on the features, between the LSTM layers and before the classifier.
        seed: Seed of the taggers' initialisation and batch order.
    """

    strategies: list[str] | None = None
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 2e-3
    lstm_hidden: int | None = None
    dropout: float = 0.1
    seed: int = 42


def run(features: FeatureSettings = FeatureSettings(), taggers: TaggerSettings = TaggerSettings(),
        threads: int | None = None, finetune_metrics: Path | None = None, output: Path | None = None,
        ) -> list[HeadResult]:
    """Feature-based NER (BERT Table 7): a frozen encoder's layers feed a BiLSTM tagger, one per strategy.

    Args:
        features: The frozen encoder and the CoNLL-2003 sentences (FeatureSettings).
        taggers: The BiLSTM taggers and their training (TaggerSettings).
        threads: torch CPU threads (default: torch's choice).
        finetune_metrics: A fine-tuning result JSON (best_metrics.json of `bertforge finetune --task ner`, or a
            bench_finetune.py report) for the table's fine-tuning row; marked pending when the file is absent.
        output: Markdown file for the table; a CSV with the same rows and a JSON with every metric (per entity
            type too) and each epoch's loss are written next to it.
    """
    from bertforge.checkpoint import load_model
    from bertforge.pretrained import resolve_model
    from bertforge.tokenizer import BertTokenizer

    if threads:
        torch.set_num_threads(threads)
    directory = resolve_model(features.model)
    tokenizer = BertTokenizer.from_pretrained(directory)
    encoder = load_model(directory)
    config = encoder.config
    plans = [strategy(name, config.num_layers) for name in (taggers.strategies or STRATEGY_NAMES)]
    lstm_hidden = taggers.lstm_hidden or max(64, round(2 * config.hidden_size / 3 / 64) * 64)

    task = TokenClassification()
    eval_split = features.eval_split
    train_sentences, eval_sentences = read_sentences(task, features.data_dir, eval_split=eval_split,
                                                     max_train_examples=features.max_train_examples)
    train_features = task.features(train_sentences, tokenizer, max_seq_length=features.max_length, train=True)
    eval_features = task.features(eval_sentences, tokenizer, max_seq_length=features.max_length)

    started = time.perf_counter()
    train_states = extract_hidden_states(encoder, train_features, pad_id=tokenizer.pad_id)
    eval_states = extract_hidden_states(encoder, eval_features, pad_id=tokenizer.pad_id)
    print(f"features of {len(train_features)} training and {len(eval_features)} {eval_split} sequences "
          f"({config.num_layers + 1} hidden states each) in {time.perf_counter() - started:.1f}s; "
          f"tagger: 2-layer BiLSTM, {lstm_hidden} units per direction", flush=True)

    results = []
    for plan in plans:
        torch.manual_seed(taggers.seed)
        tagger = FeatureTagger(plan, hidden_size=config.hidden_size, num_labels=len(task.label_names),
                               lstm_hidden=lstm_hidden, dropout=taggers.dropout)
        results.append(train_head(tagger, task, (train_states, train_features), (eval_states, eval_features),
                                  eval_sentences, taggers))

    title = (f"CoNLL-2003 {eval_split} entity F1 (conlleval, × 100), model {features.model} "
             f"(L={config.num_layers}, H={config.hidden_size}), frozen; tagger trained on the first "
             f"{len(train_sentences)} training sentences, {taggers.epochs} epochs, batch {taggers.batch_size}, "
             f"Adam lr {taggers.learning_rate}, BiLSTM {lstm_hidden} units per direction")
    report(results, title, split=eval_split, finetune_metrics=finetune_metrics, output=output)
    return results


def read_sentences(task: TokenClassification, data_dir: Path, *, max_train_examples: int | None,
                   eval_split: str) -> tuple[list, list]:
    """The training sentences (the first `max_train_examples`) and those of `eval_split`, with `task`'s tags
    fitted on the training ones; an evaluation tag the training sentences never show is an error."""
    from bertforge.data.tables import DataError

    train_sentences = task.read(data_dir / "train.txt")
    train_sentences = train_sentences[:max_train_examples] if max_train_examples else train_sentences
    eval_sentences = task.read(data_dir / f"{eval_split}.txt")
    if not train_sentences or not eval_sentences:
        raise DataError(f"{data_dir}: train.txt or {eval_split}.txt holds no sentences")
    task.fit_labels(train_sentences)
    unseen = sorted({t for s in eval_sentences for t in s.tags} - set(task.label_names))
    if unseen:
        raise DataError(f"{data_dir}/{eval_split}.txt: tags {unseen} never occur in the first {len(train_sentences)} "
                        "training sentences; raise --max-train-examples")
    return train_sentences, eval_sentences


def report(results: Sequence[HeadResult], title: str, *, split: str, finetune_metrics: Path | None,
           output: Path | None) -> None:
    """Print the comparison as a markdown table under `title`; with `output`, write it and its CSV and JSON."""
    source = str(finetune_metrics) if finetune_metrics else "no --finetune-metrics given"
    finetune = finetune_f1(finetune_metrics) if finetune_metrics else None
    header, rows = results_table(results, finetune=finetune, finetune_source=source, split=split)
    lines = [title, "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * 4 + "---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text)
    if output is not None:
        write_results(Path(output), text, header, rows, results, finetune)


def train_head(tagger: FeatureTagger, task: TokenClassification, train: tuple, evaluation: tuple,
               eval_sentences: list, settings: TaggerSettings) -> HeadResult:
    """Train one strategy's tagger on (hidden states, features) and score it on the evaluation pair."""
    started = time.perf_counter()
    history = train_tagger(tagger, *train, epochs=settings.epochs, batch_size=settings.batch_size,
                           learning_rate=settings.learning_rate, seed=settings.seed)
    seconds = time.perf_counter() - started
    metrics = task.evaluate(eval_sentences, evaluation[1], predict_logits(tagger, *evaluation))
    result = HeadResult(tagger.plan, metrics, history=history, train_seconds=seconds)
    if tagger.mix is not None:
        result.mix_weights, result.gamma = tagger.mix.weights().tolist(), tagger.mix.gamma.item()
    print(f"{tagger.plan.name:<20} F1 {100 * metrics['f1']:.1f}  (train loss {history[-1]['train_loss']:.4f}, "
          f"{seconds:.0f}s)", flush=True)
    return result


def write_results(output: Path, table: str, header: list[str], rows: list[list[str]], results: list[HeadResult],
                  finetune: dict | None) -> None:
    """The markdown table, a CSV with the same rows, and a JSON with every metric and each epoch's loss."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table + "\n", encoding="utf-8")
    with output.with_suffix(".csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    details = [{"strategy": r.strategy.name, "layers": list(r.strategy.layers), "metrics": r.metrics,
                "mix_weights": r.mix_weights, "gamma": r.gamma, "history": r.history,
                "train_seconds": round(r.train_seconds, 1)} for r in results]
    output.with_suffix(".json").write_text(json.dumps({"finetune": finetune, "strategies": details}, indent=2)
                                           + "\n", encoding="utf-8")
