"""`bertforge finetune`: read a task's data, fine-tune a pre-trained checkpoint on it, keep the best model.

    bertforge finetune --task sst2 --data-dir ../shared/data/glue/SST-2 --model all-minilm-l6-v2 --output-dir out
    bertforge finetune --task classification --train train.csv --validation dev.csv --text-column text \\
        --label-column label --epochs 3 --output-dir out
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Literal

import torch

from bertforge.data.tables import DataError
from bertforge.files import move_into_place, open_text, remove_stale_temporaries, temporary_sibling, write_text_atomic
from bertforge.options import check_length, check_options, resolve_device
from bertforge.tasks.classification import GLUE_TASKS
from bertforge.training.finetune_loop import TASK_CONFIG_KEY, EvalSet, TrainResult, seed_everything
from bertforge.training.finetune_loop import train as train_loop

log = logging.getLogger(__name__)

DEFAULT_FILES = {  # task -> (train file, validation files) inside --data-dir
    **{name: ("train.tsv", spec.validation) for name, spec in GLUE_TASKS.items()},
    "ner": ("train.txt", ("valid.txt",)),
}


def run(
    output_dir: Path,
    task: str = "classification",
    model: str = "all-minilm-l6-v2",
    train: Path | None = None,
    validation: Path | list[Path] | None = None,
    data_dir: Path | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    label_separator: str = ",",
    epochs: float = 3.0,
    batch_size: int = 32,
    learning_rate: float = 2e-5,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    dropout: float = 0.1,
    max_length: int = 128,
    long_text: Literal["truncate", "sliding_window"] = "truncate",
    stride: int | None = None,
    max_query_length: int = 64,
    max_answer_length: int = 30,
    n_best_size: int = 20,
    null_score_threshold: float = 0.0,
    seed: int = 42,
    early_stopping_patience: int | None = None,
    max_train_examples: int | None = None,
    max_eval_examples: int | None = None,
    titles: Path | None = None,
    eval_titles: Path | None = None,
    eval_batch_size: int = 64,
    group_by_length: bool = True,
    token_loss: Literal["auto", "constant", "batch_mean"] = "auto",
    tensorboard: bool = True,
    progress: bool = True,
    threads: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune a BERT checkpoint on a task; the best epoch's model is saved to output_dir.

    Args:
        output_dir: Where the model (Hugging Face format), metrics.jsonl, tensorboard/ and the run's settings go.
        task: A GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli), classification, regression or
            multilabel (your own CSV/TSV/JSONL), ner (CoNLL-2003 format), squad / squad_v2, or swag.
        model: A model directory (bertforge or Hugging Face BERT), or all-minilm-l6-v2 (the packaged checkpoint).
        train: Training data (for GLUE/CoNLL it defaults to the file inside --data-dir).
        validation: Evaluation file(s), evaluated after every epoch; the first chooses the best checkpoint.
        data_dir: A GLUE task folder or the CoNLL-2003 folder, holding the standard file names.
        text_column: Column of the text (own data; for swag: the context column, default sent1).
        text_pair_column: Column of the second text of a pair (own data).
        label_column: Column of the label (own data).
        label_separator: Separator between labels of one row for multilabel.
        epochs: Passes over the training data (the paper: 2-4); may be fractional.
        batch_size: Training batch size (the paper: 16 or 32).
        learning_rate: Peak AdamW learning rate (the paper: 5e-5, 3e-5 or 2e-5).
        weight_decay: Decoupled weight decay (BERT: 0.01).
        warmup_ratio: Share of the steps with linear warmup (BERT: 0.1), then linear decay to 0.
        dropout: Dropout probability in the encoder and before the head (BERT: 0.1).
        max_length: Longest input in tokens (longer inputs are truncated or windowed).
        long_text: For classification: truncate, or sliding_window (chunks whose logits are averaged).
        stride: Tokens between the starts of successive windows (sliding_window, squad).
        max_query_length: SQuAD: questions are cut to this many tokens.
        max_answer_length: SQuAD: longest answer span in tokens.
        n_best_size: SQuAD: start and end candidates considered per window.
        null_score_threshold: SQuAD v2: answer "no answer" when null score - best span score exceeds this.
        seed: Random seed (initialisation of the head, dropout, batch order).
        early_stopping_patience: Stop after this many epochs without improvement of the main metric.
        max_train_examples: Use only the first N training examples (quick runs on small machines).
        max_eval_examples: Use only the first N validation examples.
        titles: SQuAD: a text file of article titles (one per line) to keep for training.
        eval_titles: SQuAD: a text file of article titles to keep for evaluation.
        eval_batch_size: Evaluation batch size.
        group_by_length: Batch training examples of similar length together (less padding).
        token_loss: Token tasks (NER): "constant" divides each batch's summed loss by the mean number of scored
            tokens per batch, so every token weighs the same whatever the length of its batch mates;
            "batch_mean" averages within each batch (as transformers does); "auto" = constant when grouping by
            length.
        tensorboard: Also write TensorBoard event files to output_dir/tensorboard.
        progress: Show a progress bar.
        threads: CPU threads for torch (default: torch's choice).
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        overwrite: Replace what output_dir holds (a folder that is not empty is refused without it). The new
            run is built beside it and replaces it only when finished, so a killed run changes nothing.
    """
    from bertforge.checkpoint import load_model, read_config, save_model
    from bertforge.pretrained import resolve_model
    from bertforge.tasks.base import family
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.run_folder import check_run_folder

    check_options(locals())
    if threads:
        torch.set_num_threads(threads)
    output_dir = Path(output_dir)
    options = {k: v for k, v in locals().items() if k in _FAMILY_OPTIONS}
    options["doc_stride"] = options.pop("stride")
    family_task = family(task, **options)
    train_path, eval_paths = _data_files(family_task.name, train, validation, data_dir)
    model_dir = resolve_model(model)
    positions = read_config(model_dir).get("max_position_embeddings", 512)
    check_length("--max-length", max_length, positions, str(model_dir))
    check_run_folder(output_dir, resume=None, overwrite=overwrite, clear=False,
                     inputs=(train_path, *eval_paths, model_dir, titles, eval_titles))
    remove_stale_temporaries(output_dir.parent, name=output_dir.name)
    tokenizer = BertTokenizer.from_pretrained(model_dir)

    train_examples = family_task.read(train_path, titles=_lines(titles)) if titles else family_task.read(train_path)
    train_examples = train_examples[:max_train_examples] if max_train_examples else train_examples
    if not train_examples:
        raise DataError(f"{train_path}: no training examples")
    family_task.fit_labels(train_examples)
    train_features = family_task.features(train_examples, tokenizer, max_seq_length=max_length, train=True)
    eval_sets = []
    for path in eval_paths:
        examples = family_task.read(path, titles=_lines(eval_titles)) if eval_titles else family_task.read(path)
        examples = examples[:max_eval_examples] if max_eval_examples else examples
        features = family_task.features(examples, tokenizer, max_seq_length=max_length)
        eval_sets.append(EvalSet(Path(path).stem, examples, features))
    log.info("%s: %d training examples (%d features), %s", family_task.name, len(train_examples), len(train_features),
             ", ".join(f"{s.name}: {len(s.examples)} examples" for s in eval_sets) or "no validation set")

    seed_everything(seed)  # the new head's initial weights depend on the seed too
    net = load_model(model_dir, family_task.model_class, **family_task.model_kwargs())
    net = with_dropout(net, dropout).to(resolve_device(device))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in locals().items()
                if k in run.__code__.co_varnames[: run.__code__.co_argcount]}
    settings["validation"] = [str(p) for p in eval_paths]
    # The run is built in a temporary folder beside output_dir and moved there when it has finished.
    work = temporary_sibling(output_dir)
    write_text_atomic(work / "finetune_config.json", json.dumps(settings, indent=2, default=str) + "\n")

    def save_best(trained, record: dict) -> None:
        save_model(trained, work, tokenizer=tokenizer,
                   extra_config={TASK_CONFIG_KEY: {**family_task.settings(), "max_seq_length": max_length}})
        write_text_atomic(work / "best_metrics.json", json.dumps(record, indent=2) + "\n")

    try:
        result = train_loop(net, family_task, train_features, eval_sets, pad_id=tokenizer.pad_id, epochs=epochs,
                            batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                            warmup_ratio=warmup_ratio, seed=seed, early_stopping_patience=early_stopping_patience,
                            eval_batch_size=eval_batch_size, group_by_length=group_by_length,
                            token_loss=token_loss, save_best=save_best, log_file=work / "metrics.jsonl",
                            tensorboard_dir=work / "tensorboard" if tensorboard else None, progress=progress)
    except BaseException:  # a failed run leaves output_dir as it was (a kill leaves `work`, removed next time)
        shutil.rmtree(work, ignore_errors=True)
        raise
    move_into_place(work, output_dir)
    best = f"best {family_task.metric_names[0]} {result.best_metric:.4f} at epoch {result.best_epoch}" \
        if result.best_metric is not None else "no validation set: last epoch kept"
    print(f"fine-tuned {family_task.name} in {result.train_seconds:.1f}s; {best}; model in {output_dir}")
    return result


_FAMILY_OPTIONS = ("text_column", "text_pair_column", "label_column", "label_separator", "long_text", "stride",
                   "max_query_length", "max_answer_length", "n_best_size", "null_score_threshold")


def _data_files(task: str, train_file: Path | None, validation: Path | list[Path] | None,
                data_dir: Path | None) -> tuple[Path, list[Path]]:
    if isinstance(validation, (str, Path)):
        validation = [validation]
    defaults = DEFAULT_FILES.get(task)
    if data_dir is not None and defaults is None:
        raise DataError(f"--data-dir has no standard layout for task {task!r}; give --train and --validation")
    if train_file is None:
        if data_dir is None:
            raise DataError("give --train (or --data-dir for a GLUE task or CoNLL-2003)")
        train_file = Path(data_dir) / defaults[0]
    if validation is None and data_dir is not None:
        validation = [Path(data_dir) / name for name in defaults[1]]
    return Path(train_file), [Path(p) for p in validation or []]


def _lines(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    with open_text(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def with_dropout(net: torch.nn.Module, dropout: float) -> torch.nn.Module:
    """Set every dropout probability: hidden, attention (a plain attribute of the fused attention) and head."""
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        if hasattr(module, "dropout_p"):
            module.dropout_p = dropout
    net.config = net.config.replace(hidden_dropout=dropout, attention_dropout=dropout)
    return net
