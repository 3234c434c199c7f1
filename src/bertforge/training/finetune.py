"""`bertforge finetune`: read a task's data, fine-tune a pre-trained checkpoint on it, keep the best model.

    bertforge finetune --task sst2 --data-dir ../shared/data/glue/SST-2 --model all-minilm-l6-v2 --output-dir out
    bertforge finetune --task classification --train train.csv --validation dev.csv --text-column text \\
        --label-column label --epochs 3 --output-dir out
    torchrun --nproc_per_node 4 -m bertforge finetune ...     # data-parallel: the same steps, split 4 ways
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from bertforge.checkpoint import read_config
from bertforge.data import hf_datasets
from bertforge.data.tables import DataError, source_name
from bertforge.errors import OptionError
from bertforge.files import move_into_place, open_text, remove_stale_temporaries, temporary_sibling, write_text_atomic
from bertforge.hardware import keep_freed_memory
from bertforge.options import check_length, check_options, resolve_device
from bertforge.precision import Precision, TrainingPrecision, resolve_precision
from bertforge.tasks.classification import GLUE_TASKS
from bertforge.tasks.registry import TASK_CONFIG_KEY
from bertforge.training.distributed import World, from_main, join_world
from bertforge.training.finetune_loop import EvalSet, RunOutputs, TrainResult, TrainSettings, seed_everything
from bertforge.training.finetune_loop import train as train_loop

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"  # inside --output-dir, while a run with --save-every is unfinished
# Settings a resumed run may change: they do not change the weights it trains.
RESUME_MAY_CHANGE = ("output_dir", "tensorboard", "threads", "save_every", "keep_checkpoints")

DEFAULT_FILES = {  # task -> (train file, validation files) inside --data-dir
    **{name: ("train.tsv", spec.validation) for name, spec in GLUE_TASKS.items()},
    "ner": ("train.txt", ("valid.txt",)),
}


@dataclass(frozen=True)
class DataSettings:
    """Data.

    Args:
        train: Training data: a file (.csv/.tsv/.jsonl/.parquet; GLUE TSV; CoNLL text; SQuAD JSON), a folder saved
            by `datasets`' save_to_disk, or (Python API) a `datasets.Dataset`. For GLUE/CoNLL it defaults to the
            file inside --data-dir.
        validation: Evaluation data (as --train), evaluated after every epoch; the first chooses the best checkpoint.
        data_dir: A GLUE task folder or the CoNLL-2003 folder, holding the standard file names.
        dataset: A Hugging Face Hub dataset, name[:config] (glue:sst2, conll2003): its train split trains and its
            validation split(s) evaluate, unless --train/--validation are given. Needs `datasets` and the network.
        text_column: Column of the text (own data; for swag: the context column, default sent1).
        text_pair_column: Column of the second text of a pair (own data).
        label_column: Column of the label (own data).
        label_separator: Separator between labels of one row for multilabel.
        titles: SQuAD: a text file of article titles (one per line) to keep for training.
        eval_titles: SQuAD: a text file of article titles to keep for evaluation.
        max_train_examples: Use only the first N training examples (quick runs on small machines).
        max_eval_examples: Use only the first N validation examples.
    """

    train: Path | None = None
    validation: Path | list[Path] | None = None
    data_dir: Path | None = None
    dataset: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_separator: str = ","
    titles: Path | None = None
    eval_titles: Path | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass(frozen=True)
class InputSettings:
    """Long inputs and answers.

    Args:
        max_length: Longest input in tokens (longer inputs are truncated or windowed).
        long_text: For classification: truncate, or sliding_window (chunks whose logits are averaged).
        stride: Tokens between the starts of successive windows (sliding_window, squad).
        max_query_length: SQuAD: questions are cut to this many tokens.
        max_answer_length: SQuAD: longest answer span in tokens.
        n_best_size: SQuAD: start and end candidates considered per window.
        null_score_threshold: SQuAD v2: answer "no answer" when null score - best span score exceeds this.
    """

    max_length: int = 128
    long_text: Literal["truncate", "sliding_window"] = "truncate"
    stride: int | None = None
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best_size: int = 20
    null_score_threshold: float = 0.0


@dataclass(frozen=True)
class RunContext:
    """Where and how this process runs one fine-tuning job: what run() resolved from its options.

    Args:
        output_dir: The run folder, replaced by the finished run (_train_into).
        world: This process's place among torchrun's processes (distributed.join_world).
        precision: The resolved precision: fp32, bf16 or fp16.
        record: The job's settings, written to finetune_config.json and into every checkpoint.
        resume_state: The checkpoint the run continues from (--resume), or None.
        tensorboard: Also write TensorBoard event files.
        progress: Show a progress bar.
    """

    output_dir: Path
    world: World
    precision: Precision
    record: dict
    resume_state: dict | None = None
    tensorboard: bool = True
    progress: bool = True


def run(output_dir: Path, task: str = "classification", model: str = "all-minilm-l6-v2",
        data: DataSettings = DataSettings(), inputs: InputSettings = InputSettings(),
        train: TrainSettings = TrainSettings(), tensorboard: bool = True, progress: bool = True,
        threads: int | None = None, device: str = "auto", precision: TrainingPrecision = "fp32",
        resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Fine-tune a BERT checkpoint on a task; the best epoch's model is saved to output_dir.

    Args:
        output_dir: Where the model (Hugging Face format), metrics.jsonl, curves.png, tensorboard/ and the run's
            settings go.
        task: A GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli), classification, regression or
            multilabel (your own CSV/TSV/JSONL), ner (CoNLL-2003 format), squad / squad_v2, or swag.
        model: A model directory (bertforge or Hugging Face BERT), or all-minilm-l6-v2 (the packaged checkpoint).
        data: Where the examples come from (DataSettings).
        inputs: How long inputs are cut and answers decoded (InputSettings).
        train: The training recipe (finetune_loop.TrainSettings).
        tensorboard: Also write TensorBoard event files to output_dir/tensorboard.
        progress: Show a progress bar.
        threads: CPU threads for torch (default: torch's choice).
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (autocast; GPUs and CPUs with native bf16), fp16 (autocast + loss scaling) or auto
            (bf16 where the hardware has it natively). The saved weights are fp32 either way.
        resume: Continue the interrupted run in output_dir from its newest intact checkpoint (--save-every),
            mid-epoch, exactly where it stopped; every setting that changes the result must be the same.
        overwrite: Replace what output_dir holds (a folder that is not empty is refused without it). The new
            run is built beside it and replaces it only when finished, so a killed run changes nothing.
    """
    from bertforge.checkpoint import load_model
    from bertforge.pretrained import resolve_model
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.run_folder import check_run_folder

    check_options({"data": data, "inputs": inputs, "train": train, "threads": threads, "device": device})
    torch_device, world = join_world(resolve_device(device))  # under torchrun: this process's rank and GPU
    _check_batch_split(train, world)
    running_precision = resolve_precision(precision, torch_device, training=True)
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()
    output_dir = Path(output_dir)
    family_task = task_family(task, data, inputs)
    train_path, eval_paths = _data_files(family_task.name, data.train, data.validation, data.data_dir, data.dataset)
    model_dir = resolve_model(model)
    check_length("--max-length", inputs.max_length, read_config(model_dir).get("max_position_embeddings", 512),
                 str(model_dir))
    checkpoints = output_dir / CHECKPOINTS
    offer_resume = resume or checkpoints.is_dir()  # a finished model has no checkpoints: only --overwrite fits
    if world.is_main:  # under torchrun rank 0 alone owns the folder: the others may start after it began writing
        check_run_folder(output_dir, resume=resume if offer_resume else None, overwrite=overwrite, clear=False,
                         inputs=[p for p in (train_path, *eval_paths, model_dir, data.titles, data.eval_titles)
                                 if _is_path(p)])
        remove_stale_temporaries(output_dir.parent, name=output_dir.name)
    record = {"output_dir": output_dir, "task": task, "model": model, **dataclasses.asdict(data),
              **dataclasses.asdict(inputs), **dataclasses.asdict(train), "train": source_name(train_path),
              "validation": [source_name(p) for p in eval_paths], "tensorboard": tensorboard, "threads": threads,
              "device": device, "precision": precision}
    resume_state = _resume_state(checkpoints, _jsonable(record), world) if resume else None
    if resume_state is None and train.save_every and checkpoints.is_dir() and world.is_main:
        shutil.rmtree(checkpoints)  # --overwrite: the earlier run's checkpoints would mix with this run's
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    train_features, eval_sets = read_features(family_task, tokenizer, data, inputs.max_length, train_path, eval_paths)

    seed_everything(train.seed)  # the new head's initial weights depend on the seed too
    net = load_model(model_dir, family_task.model_class, **family_task.model_kwargs())
    net = with_dropout(net, train.dropout, train.classifier_dropout).to(torch_device)
    context = RunContext(output_dir, world, running_precision, record, resume_state=resume_state,
                         tensorboard=tensorboard, progress=progress)
    result = _train_into(context, net, family_task, tokenizer, train_features, eval_sets, train, inputs.max_length)
    if not world.is_main:
        return result
    best = f"best {family_task.metric_names[0]} {result.best_metric:.4f} at epoch {result.best_epoch}" \
        if result.best_metric is not None else "no validation set: last epoch kept"
    print(f"fine-tuned {family_task.name} in {result.train_seconds:.1f}s; {best}; model in {output_dir}")
    return result


def task_family(task: str, data: DataSettings, inputs: InputSettings):
    """The task family of `task` with the options it reads (columns, windows, answer decoding)."""
    from bertforge.tasks.registry import family

    return family(task, text_column=data.text_column, text_pair_column=data.text_pair_column,
                  label_column=data.label_column, label_separator=data.label_separator, long_text=inputs.long_text,
                  doc_stride=inputs.stride, max_query_length=inputs.max_query_length,
                  max_answer_length=inputs.max_answer_length, n_best_size=inputs.n_best_size,
                  null_score_threshold=inputs.null_score_threshold)


def read_features(family_task, tokenizer, data: DataSettings, max_length: int, train_path: Path,
                  eval_paths: list[Path]) -> tuple[list, list[EvalSet]]:
    """The training features (labels fitted on the training examples) and one EvalSet per validation file."""
    train_examples = _read(family_task, train_path, data.titles, data.max_train_examples)
    if not train_examples:
        raise DataError(f"{source_name(train_path)}: no training examples")
    family_task.fit_labels(train_examples)
    train_features = family_task.features(train_examples, tokenizer, max_seq_length=max_length, train=True)
    eval_sets = []
    for path in eval_paths:
        examples = _read(family_task, path, data.eval_titles, data.max_eval_examples)
        name = Path(path).stem if _is_path(path) else source_name(path)
        eval_sets.append(EvalSet(name, examples,
                                 family_task.features(examples, tokenizer, max_seq_length=max_length)))
    log.info("%s: %d training examples (%d features), %s", family_task.name, len(train_examples), len(train_features),
             ", ".join(f"{s.name}: {len(s.examples)} examples" for s in eval_sets) or "no validation set")
    return train_features, eval_sets


def _read(family_task, path: Path, titles: Path | None, limit: int | None) -> list:
    examples = family_task.read(path, titles=_lines(titles)) if titles else family_task.read(path)
    return examples[:limit] if limit else examples


def _train_into(context: RunContext, net, family_task, tokenizer, train_features: list, eval_sets: list[EvalSet],
                settings: TrainSettings, max_length: int) -> TrainResult:
    """Train, keeping the best model. The run is built in a temporary folder beside output_dir and moved
    there when it has finished, so a failed or killed run leaves output_dir as it was, except for the
    checkpoints --save-every writes into output_dir/checkpoints (they go when the finished run replaces it).
    Under torchrun only rank 0 writes; the other ranks train their share of every batch."""
    from bertforge.checkpoint import save_model

    if not context.world.is_main:
        return train_loop(net, family_task, train_features, eval_sets, pad_id=tokenizer.pad_id, settings=settings,
                          precision=context.precision, world=context.world, progress=False,
                          resume_state=context.resume_state)
    work = temporary_sibling(context.output_dir)
    run_settings = _jsonable(context.record)
    write_text_atomic(work / "finetune_config.json", json.dumps(run_settings, indent=2) + "\n")

    def save_best(trained, metrics: dict) -> None:
        save_model(trained, work, tokenizer=tokenizer,
                   extra_config={TASK_CONFIG_KEY: {**family_task.settings(), "max_seq_length": max_length}})
        write_text_atomic(work / "best_metrics.json", json.dumps(metrics, indent=2) + "\n")

    outputs = RunOutputs(save_best=save_best, log_file=work / "metrics.jsonl",
                         tensorboard_dir=work / "tensorboard" if context.tensorboard else None,
                         curves_file=work / "curves.png", checkpoints=context.output_dir / CHECKPOINTS,
                         run_settings=run_settings)
    try:
        result = train_loop(net, family_task, train_features, eval_sets, pad_id=tokenizer.pad_id, settings=settings,
                            precision=context.precision, world=context.world, progress=context.progress,
                            outputs=outputs, resume_state=context.resume_state)
    except BaseException:  # a kill leaves `work`, removed by the next run
        shutil.rmtree(work, ignore_errors=True)
        raise
    move_into_place(work, context.output_dir)
    return result


def _resume_state(checkpoints: Path, settings: dict, world: World = World()) -> dict | None:
    """The newest intact checkpoint of the interrupted run (None: there is none yet, start from step 0), after
    checking that every setting that changes the result is the one it ran with. Rank 0 chooses it for all."""
    from bertforge.training.checkpointing import load_checkpoint, resume_checkpoint

    if world.is_main:
        remove_stale_temporaries(checkpoints)
    path = from_main(resume_checkpoint(checkpoints) if world.is_main else None, world)
    if path is None:
        log.info("--resume: no checkpoint in %s yet: starting from step 0", checkpoints)
        return None
    state = load_checkpoint(path)
    for name, value in settings.items():
        earlier = state["settings"].get(name)
        if name not in RESUME_MAY_CHANGE and earlier != value:
            raise OptionError(f"--resume: --{name.replace('_', '-')} is {value!r} but the interrupted run used "
                              f"{earlier!r} ({path}); resume with the same value, or start over with --overwrite")
    log.info("resuming from %s (step %d)", path, state["step"])
    return state


def _check_batch_split(train: TrainSettings, world: World) -> None:
    """Under torchrun every optimizer step splits --batch-size over processes x --grad-accum-steps micro-batches."""
    parts = world.size * train.grad_accum_steps
    if world.distributed and train.batch_size % parts:
        raise OptionError(f"--batch-size {train.batch_size} is not divisible by {world.size} processes x "
                          f"--grad-accum-steps {train.grad_accum_steps}; choose a multiple of {parts}")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _is_path(source) -> bool:
    return isinstance(source, (str, Path))


def _data_files(task: str, train_file, validation, data_dir: Path | None, dataset: str | None = None) -> tuple:
    """(training source, evaluation sources): paths, or `datasets.Dataset`s from the Python API or --dataset."""
    if _is_path(validation) or hf_datasets.is_dataset(validation):
        validation = [validation]
    if dataset is not None:
        if data_dir is not None:
            raise DataError("--dataset and --data-dir: choose one source of data")
        hub_train, hub_validation = hf_datasets.load_hub(dataset)
        train_file = hub_train if train_file is None else train_file
        validation = hub_validation if validation is None else validation
    as_source = lambda s: Path(s) if _is_path(s) else s  # noqa: E731
    if train_file is not None and not _is_path(train_file):
        return train_file, [as_source(p) for p in validation or []]
    defaults = DEFAULT_FILES.get(task)
    if data_dir is not None and defaults is None:
        raise DataError(f"--data-dir has no standard layout for task {task!r}; give --train and --validation")
    if train_file is None:
        if data_dir is None:
            raise DataError("give --train (or --data-dir for a GLUE task or CoNLL-2003)")
        train_file = Path(data_dir) / defaults[0]
    if validation is None and data_dir is not None:
        validation = [Path(data_dir) / name for name in defaults[1]]
    return Path(train_file), [as_source(p) for p in validation or []]


def _lines(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    with open_text(path) as handle:
        return [line.strip() for line in handle if line.strip()]


def with_dropout(net: torch.nn.Module, dropout: float, classifier_dropout: float | None = None) -> torch.nn.Module:
    """Set every dropout probability: hidden, attention (a plain attribute of the fused attention) and head.

    The head's is `classifier_dropout` when given, else the one the model's config already sets (as
    transformers honours `classifier_dropout`), else `dropout`; the config records it for the saved model."""
    head_dropout = classifier_dropout if classifier_dropout is not None else net.config.classifier_dropout
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        if hasattr(module, "dropout_p"):
            module.dropout_p = dropout
    head = getattr(net, "dropout", None)  # the classifier heads' dropout (heads.py); QA has none
    if head_dropout is not None and isinstance(head, torch.nn.Dropout):
        head.p = head_dropout
    net.config = net.config.replace(hidden_dropout=dropout, attention_dropout=dropout,
                                    classifier_dropout=head_dropout)
    return net
