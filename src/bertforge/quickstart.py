"""`bertforge quickstart`: the whole of BERT pre-training in about ten minutes on a laptop CPU, offline.

Text every Python installation carries (the language reference topics of `pydoc_data` and the
docstrings of the standard library's modules, classes and functions) -> a WordPiece vocabulary
trained on it -> memory-mapped shards -> a small BERT pre-trained with the budget recipe (masked LM on
packed rows, bf16 where the processor has it, a schedule planned to end at the wall-clock budget) ->
held-out MLM accuracy against the untrained model, fill-mask predictions, a report (JSON + PNG curves)
and a Hugging Face-format checkpoint.
"""

from __future__ import annotations

import ast
import json
import re
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from bertforge.data.corpus import corpus_files as user_corpus_files
from bertforge.data.shards import prepare_corpus
from bertforge.errors import DataError
from bertforge.files import (
    check_output_dir,
    move_into_place,
    remove_stale_temporaries,
    temporary_sibling,
    write_text_atomic,
)
from bertforge.heads import BertForPreTraining
from bertforge.tokenizer import BertTokenizer
from bertforge.training.pretrain import PretrainConfig, build_model, train

# Sentences about Python with one word hidden (the expected word is in the vocabulary of the docs).
FILL_MASK = [
    ("The [MASK] statement is used to exit the nearest enclosing loop.", "break"),
    ("Return a new list containing all items from the iterable in ascending [MASK].", "order"),
    ("A dictionary maps hashable keys to arbitrary [MASK].", "values"),
    ("If the file does not exist, an [MASK] is raised.", "exception"),
    ("This module provides access to some variables used or maintained by the [MASK].", "interpreter"),
]
_SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__phello__"}


@dataclass(frozen=True)
class Size:
    """A quickstart size: the model, the vocabulary and how much of the built-in corpus is used."""

    model: dict
    vocab_size: int
    max_length: int
    batch_size: int
    max_modules: int | None
    learning_rate: float  # peak


SIZES: dict[str, Size] = {
    # See docs/results/pretraining_budget.md for the measurements behind these choices.
    "small": Size({"num_layers": 4, "hidden_size": 256, "num_heads": 4, "intermediate_size": 1024}, 8000, 128, 32,
                  None, 1e-3),
    # Seconds, for tests and a first look.
    "tiny": Size({"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 128}, 1000, 64, 16, 40,
                 3e-3),
}


def _paragraphs(text: str) -> list[str]:
    """Hard-wrapped prose -> one line per paragraph; code, grammar and reST markup lines are dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        prose = [line.strip() for line in lines
                 if not line.startswith(("   ", "\t", ">>>", "...")) and not set(line.strip()) <= set("*=-~^")]
        if prose:
            out.append(" ".join(prose))
    return out


def builtin_documents(max_modules: int | None = None) -> list[list[str]]:
    """Documents (lists of paragraphs): each pydoc topic, and each stdlib module's docstrings."""
    from pydoc_data.topics import topics

    documents = [_paragraphs(topics[key]) for key in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.rglob("*.py")) if not _SKIP_PARTS & set(p.relative_to(root).parts)]
    for path in files[:max_modules]:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef))]
        paragraphs = [p for node in nodes for p in _paragraphs(ast.get_docstring(node) or "")]
        documents.append(paragraphs)
    return [d for d in documents if d]


def write_corpus(documents: list[list[str]], path: Path) -> Path:
    """The BERT input format: one paragraph per line, a blank line between documents."""
    write_text_atomic(path, "\n\n".join("\n".join(doc) for doc in documents) + "\n")
    return path


def fill_mask(model: BertForPreTraining, tokenizer: BertTokenizer, text: str, top_k: int = 5) -> list[str]:
    """The model's top-k tokens for the first [MASK] in `text`, from the fill-mask pipeline."""
    from bertforge.inference.pipelines import fill_mask as fill_mask_pipeline
    from bertforge.inference.predictor import Predictor

    first_mask = fill_mask_pipeline(Predictor(model.eval(), tokenizer), [text], top_k=top_k)[0][0]
    return [t["token"] for t in first_mask]


def corpus_files(files: list[Path] | None, output_dir: Path, *, max_modules: int | None) -> list[Path]:
    """The user's `files` (folders expanded to their text files, each checked: data.corpus.corpus_files), or the
    built-in corpus written to output_dir/corpus (its first `max_modules`)."""
    if files:
        files = user_corpus_files(files)
        print(f"corpus: {', '.join(map(str, files))}")
        return files
    documents = builtin_documents(max_modules)
    path = write_corpus(documents, output_dir / "corpus" / "python_docs.txt")
    print(f"corpus: {len(documents):,} documents from Python's own documentation and docstrings "
          f"({path.stat().st_size / 1e6:.1f} MB) -> {path}")
    return [path]


def compare_fill_mask(cfg: PretrainConfig, model_dir: Path, tokenizer: BertTokenizer, *,
                      seed: int) -> tuple[BertForPreTraining, list[dict]]:
    """The trained model (read back from `model_dir`) and its FILL_MASK answers beside an untrained one's."""
    from bertforge.checkpoint import load_hf_state_dict, read_weights

    trained = build_model(cfg, tokenizer.vocab_size)
    load_hf_state_dict(trained, read_weights(model_dir)[0])
    torch.manual_seed(seed)
    untrained = build_model(cfg, tokenizer.vocab_size)
    predictions = []
    print("\nfill-mask (top 5), trained vs untrained:")
    for text, expected in FILL_MASK:
        row = {"text": text, "expected": expected, "trained": fill_mask(trained, tokenizer, text),
               "untrained": fill_mask(untrained, tokenizer, text)}
        predictions.append(row)
        print(f"  {text}\n    trained:   {' '.join(row['trained'])}\n    untrained: {' '.join(row['untrained'])}")
    return trained, predictions


def _record_output_dir(settings: Path, output_dir: Path) -> None:
    """The run's record of its settings names the folder the run ends in, not the one it trained in."""
    options = json.loads(settings.read_text(encoding="utf-8"))
    options["output_dir"] = str(output_dir)
    write_text_atomic(settings, json.dumps(options, indent=2))


def run(output_dir: Path = Path("quickstart"), files: list[Path] | None = None, max_minutes: float = 10.0,
        size: Literal["small", "tiny"] = "small", steps: int | None = None, threads: int | None = None,
        seed: int = 0) -> dict:
    """Pre-train a small BERT from scratch on text every Python carries, offline, in about `max_minutes`.

    Args:
        output_dir: Where the corpus, vocabulary, shards, run (checkpoints, curves.png, metrics) and
            report.json go.
        files: Text files or folders to use instead of the built-in corpus (one paragraph per line,
            a blank line between documents).
        max_minutes: Wall-clock budget of the whole job; the number of training steps is chosen to fit.
        size: small (the default, ~2M parameters) or tiny (seconds; for tests).
        steps: Train exactly this many steps instead of fitting the budget (the budget still caps the time).
        threads: CPU threads for torch (default: all cores).
        seed: Seeds the weights, the examples and the masks.

    Returns the report (also written to output_dir/report.json).
    """
    started = time.monotonic()
    if threads:
        torch.set_num_threads(threads)
    output_dir = Path(output_dir)
    run_dir = check_output_dir(output_dir / "run", option="the run folder of --output-dir,")  # before any work
    spec = SIZES[size]
    files = corpus_files(files, output_dir, max_modules=spec.max_modules)
    tokenizer = BertTokenizer.train(files, vocab_size=spec.vocab_size)
    print(f"WordPiece vocabulary: {tokenizer.vocab_size:,} tokens")
    prepared = prepare_corpus(files, output_dir / "data", tokenizer, heldout_every=20, progress=False,
                              shard_tokens=1 << 20)
    counts = prepared.meta["counts"]
    print(f"shards: {counts['train']['tokens']:,} training tokens, {counts['heldout']['tokens']:,} held out")
    if not counts["heldout"]["tokens"]:  # every 20th document is held out: too few to score the model on
        raise DataError(f"{', '.join(map(str, files))}: too little text to hold any out for the accuracy the "
                        f"quickstart reports ({counts['train']['tokens']:,} tokens); give at least 20 documents "
                        "(paragraphs separated by blank lines)")

    # What is left of the budget after the corpus, minus ~10% for the fill-mask probes and the report.
    minutes = max(0.1, max_minutes * 0.9 - (time.monotonic() - started) / 60)
    # A rerun trains beside the last run and replaces it only once it has finished: interrupted, it loses nothing.
    remove_stale_temporaries(output_dir, name=run_dir.name)  # what a killed rerun left
    fresh = temporary_sibling(run_dir)
    cfg = PretrainConfig.from_options(
        data=prepared.directory, output_dir=fresh, recipe="budget", preset="mini",
        model_overrides=spec.model, max_length=spec.max_length, batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        steps=steps, max_minutes=minutes, seed=seed, eval_batches=8, log_every=10, tensorboard=True,
        threads=threads, overwrite=True,  # a folder of its own, made just now
    )
    result = train(cfg)
    final_step = max(result.evaluations)
    before, after = result.evaluations[0], result.evaluations[final_step]
    trained, predictions = compare_fill_mask(cfg, result.model_dir, tokenizer, seed=seed)
    _record_output_dir(fresh / "config.json", run_dir)
    move_into_place(fresh, run_dir)
    model_dir = run_dir / result.model_dir.relative_to(fresh)

    report = {
        "corpus": [str(f) for f in files], "tokens": counts, "vocab_size": tokenizer.vocab_size,
        "model": {**spec.model, "parameters": sum(p.numel() for p in trained.parameters())},
        "steps": result.step, "batch_size": cfg.optim.batch_size, "max_length": cfg.corpus.max_length,
        "minutes": (time.monotonic() - started) / 60, "stopped": result.stopped,
        "heldout": {"untrained": before, "trained": after},
        "fill_mask": predictions,
        "checkpoint": str(model_dir), "plot": str(run_dir / "curves.png"), "metrics": str(run_dir / "metrics.jsonl"),
    }
    write_text_atomic(output_dir / "report.json", json.dumps(report, indent=2))
    print(f"\nheld-out MLM accuracy where the input shows [MASK]: {before['mlm_mask_accuracy']:.1%} untrained -> "
          f"{after['mlm_mask_accuracy']:.1%} trained (all masked positions: {before['mlm_accuracy']:.1%} -> "
          f"{after['mlm_accuracy']:.1%}; {result.step} steps, {report['minutes']:.1f} min)")
    print(f"report: {output_dir / 'report.json'}; curves: {report['plot']}; checkpoint: {model_dir}")
    return report
