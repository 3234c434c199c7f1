"""Fine-tuning (BERT §4, Appendix A.3): one pre-trained encoder + one small task head, trained end to end.

The paper's recipe is the default: AdamW (weight decay 0.01), peak learning rate 2e-5 (the paper searches
5e-5, 3e-5, 2e-5), 10% linear warmup then linear decay (`schedule` picks another from training/optim.py),
3 epochs, batch 32 (`grad_accum_steps` splits it into micro-batches with the same gradient), dropout 0.1.
Batches are padded only to their own longest member and grouped by length, so little compute goes to [PAD].
After every epoch the model is evaluated; the best one (by the task's main metric) is what stays in
`output_dir`, in Hugging Face format with id2label/label2id.

Under torchrun every process draws the same batches, back-propagates its own slice of each one, and the
gradients are summed over the processes before the step, so N processes take the steps one process takes
(training/distributed.py). Rank 0 evaluates and writes every file; the others follow its decisions.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from bertforge.checkpoint import load_model
from bertforge.errors import OptionError
from bertforge.precision import Precision, autocast, cast_for_inference
from bertforge.pretrained import CheckpointError, resolve_model
from bertforge.tasks.base import Feature, TaskFamily, collate
from bertforge.tasks.registry import TASK_CONFIG_KEY, family, saved_task_settings
from bertforge.training.checkpointing import rng_state, save_checkpoint, set_rng_state
from bertforge.training.distributed import World, all_reduce_sum, from_main, sum_gradients
from bertforge.training.metrics import Curve, plot_curves
from bertforge.training.optim import LookupGradients, ScheduleName, build_adamw, build_schedule, clip_gradients

if TYPE_CHECKING:
    from bertforge.tokenizer import BertTokenizer

log = logging.getLogger(__name__)

LOWER_IS_BETTER = ("mse", "loss")


@dataclass
class EvalSet:
    name: str
    examples: Sequence
    features: list[Feature]


@dataclass
class TrainResult:
    best_metric: float | None
    best_epoch: int | None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                           group: int = 50) -> list[list[int]]:
    """Random batches of similar lengths: shuffle, cut into groups of `group` batches, sort each group by
    length, split it into batches, then shuffle the batch order. Padding waste drops to a few percent while
    every epoch still sees a fresh random order."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size * group):
        chunk = sorted(order[start : start + batch_size * group], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.inference_mode()
def predict_outputs(model: torch.nn.Module, task: TaskFamily, features: Sequence[Feature], *, pad_id: int,
                    batch_size: int = 64, progress: bool = False, precision: Precision = "fp32") -> list[np.ndarray]:
    """The head's outputs for every feature, in feature order (batched longest first), forward in `precision`."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(features)), key=lambda i: -features[i].length)
    outputs: list = [None] * len(features)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch_ids in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
        batch = collate([features[i] for i in batch_ids], pad_id)
        with autocast(precision, device):
            output = model(**_to(batch, device))
        for i, value in zip(batch_ids, task.outputs(output, batch), strict=True):
            outputs[i] = value
    return outputs


def ready_to_predict(model: torch.nn.Module, device: torch.device, precision: Precision, *,
                     tokenizer: BertTokenizer) -> torch.nn.Module:
    """The model on `device` for predict_outputs in `precision` (resolved), as every inference path runs it: int8
    is the smoothed, dynamically quantised CPU copy (inference.int8.smoothed_int8, calibrated with the model's
    `tokenizer`); bf16 and fp16 the copy of precision.cast_for_inference (bf16 throughout; fp16 Linear weights),
    which predict_outputs' autocast leaves as it is in bf16."""
    if precision == "int8":
        from bertforge.inference.int8 import smoothed_int8  # in-function: training/ does not import inference/

        return smoothed_int8(model, tokenizer)
    return cast_for_inference(model.to(device), precision)


def evaluate(model, task: TaskFamily, eval_set: EvalSet, *, pad_id: int, batch_size: int = 64,
             progress: bool = False, precision: Precision = "fp32") -> dict:
    outputs = predict_outputs(model, task, eval_set.features, pad_id=pad_id, batch_size=batch_size, progress=progress,
                              precision=precision)
    return task.evaluate(eval_set.examples, eval_set.features, outputs)


@dataclass(frozen=True)
class TrainSettings:
    """Training (BERT Appendix A.3).

    Args:
        epochs: Passes over the training data (the paper: 2-4); may be fractional.
        batch_size: Training batch size (the paper: 16 or 32): examples per optimizer step, over all accumulation
            steps.
        grad_accum_steps: Split each batch into this many micro-batches, one forward and backward each, and step
            the optimizer once on their summed gradients: the same step as the whole batch, in less memory.
        learning_rate: Peak AdamW learning rate (the paper: 5e-5, 3e-5 or 2e-5).
        weight_decay: Decoupled weight decay (BERT: 0.01).
        warmup_ratio: Share of the steps with linear warmup (BERT: 0.1), then the schedule's decay.
        schedule: Learning rate after the warmup: linear decay to 0 (BERT), cosine, cosine_with_restarts,
            polynomial, constant_with_warmup, or constant (no warmup either).
        max_grad_norm: Clip the global gradient norm to this.
        dropout: Dropout probability in the encoder, and before the head unless classifier_dropout says otherwise
            (BERT: 0.1).
        classifier_dropout: Dropout before the head; default: the model's config.json `classifier_dropout`
            (transformers' setting) if it has one, else --dropout. Saved in the model's config.json.
        seed: Random seed (initialisation of the head, dropout, batch order).
        early_stopping_patience: Stop after this many epochs without improvement of the main metric.
        eval_batch_size: Evaluation batch size.
        group_by_length: Batch training examples of similar length together (less padding).
        token_loss: Token tasks (NER): "constant" divides each batch's summed loss by the mean number of scored
            tokens per batch, so every token weighs the same whatever the length of its batch mates;
            "batch_mean" averages within each batch (as transformers does); "auto" = constant when grouping by
            length.
        save_every: Write a checkpoint every n optimizer steps into output_dir/checkpoints, from which --resume
            continues mid-epoch (default: none).
        keep_checkpoints: Keep the newest n checkpoints (0 = all).
    """

    epochs: float = 3.0
    batch_size: int = 32
    grad_accum_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: ScheduleName = "linear"
    max_grad_norm: float = 1.0
    dropout: float = 0.1
    classifier_dropout: float | None = None
    seed: int = 42
    early_stopping_patience: int | None = None
    eval_batch_size: int = 64
    group_by_length: bool = True
    token_loss: Literal["auto", "constant", "batch_mean"] = "auto"
    save_every: int | None = None
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        if self.grad_accum_steps >= 1 and self.batch_size % self.grad_accum_steps:  # < 1: check_options refuses it
            raise OptionError(f"--batch-size {self.batch_size} is not divisible by --grad-accum-steps "
                              f"{self.grad_accum_steps}; choose a batch size that is a multiple of it")
        if self.schedule not in ScheduleName.__args__:  # the command line checks it; the Python API comes here
            raise OptionError(f"--schedule {self.schedule}: choose one of {', '.join(ScheduleName.__args__)}")


@dataclass(frozen=True)
class RunOutputs:
    """What a run keeps besides the TrainResult it returns; each one left None is not kept. Under torchrun
    only rank 0 is given any.

    Args:
        save_best: Called as save_best(model, metrics) whenever the main metric (the first metric of the first
            eval set) improves, or after the last epoch when there is nothing to evaluate on.
        log_file: One JSON line per epoch: its training loss and evaluation metrics (metrics.jsonl).
        tensorboard_dir: TensorBoard event files: the loss and learning rate per step, the metrics per epoch.
        curves_file: A PNG of the training loss and the main metric against the step, drawn at the end.
        checkpoints: The folder the checkpoints of `TrainSettings.save_every` go to (`_Progress.state`).
        run_settings: The job's settings, stored in every checkpoint (a resumed run checks it repeats them).
    """

    save_best: Callable[[torch.nn.Module, dict], None] | None = None
    log_file: Path | None = None
    tensorboard_dir: Path | None = None
    curves_file: Path | None = None
    checkpoints: Path | None = None
    run_settings: dict | None = None


def train(model: torch.nn.Module, task: TaskFamily, train_features: list[Feature], eval_sets: Sequence[EvalSet] = (),
          *, pad_id: int, settings: TrainSettings = TrainSettings(), precision: Precision = "fp32",
          world: World = World(), progress: bool = True, outputs: RunOutputs = RunOutputs(),
          resume_state: dict | None = None) -> TrainResult:
    """Train `model` on `train_features` with the recipe `settings`, evaluating on `eval_sets` after each epoch
    and keeping what `outputs` asks for. `settings.dropout` is the model's business (finetune.with_dropout);
    the loop uses the rest.

    `precision` (resolved by bertforge.precision): forward and loss under bf16/fp16 autocast; fp16 adds loss
    scaling. The weights and the optimizer state stay fp32.

    `world` (distributed.join_world): this process's share of every batch. Rank 0 alone evaluates, and the
    other ranks take its record of every epoch.

    With `settings.save_every`, a checkpoint goes to `outputs.checkpoints` every that many steps;
    `resume_state` (one such checkpoint) continues it exactly where it stopped.
    """
    _refuse_outer_autocast(model)
    seed_everything(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(train_features) / settings.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * settings.epochs))
    optimizer = build_adamw(model, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = build_schedule(optimizer, settings.schedule, warmup_steps=int(settings.warmup_ratio * total_steps),
                              total_steps=total_steps)
    stepper = _Stepper(model, task, optimizer, schedule, pad_id=pad_id, max_grad_norm=settings.max_grad_norm,
                       grad_accum_steps=settings.grad_accum_steps,
                       loss_options=_loss_options(task, train_features, settings, steps_per_epoch),
                       writer=_tensorboard(outputs.tensorboard_dir), total_steps=total_steps, precision=precision,
                       bar=tqdm(total=total_steps, desc="fine-tuning", unit="step", disable=not progress),
                       world=world)
    run = _Progress(stepper, generator, settings, outputs)
    started = time.perf_counter()
    if resume_state is not None:
        run.restore(resume_state)
    result, main_metric = run.result, task.metric_names[0]
    try:  # the model's tables get their usual backward back even if a step fails
        for epoch in range(run.epoch, math.ceil(settings.epochs) + 1):
            train_loss = run.train_epoch(train_features, epoch)
            record = {"epoch": epoch, "step": stepper.step, "train_loss": train_loss,
                      "elapsed_s": round(time.perf_counter() - started + run.earlier_seconds, 2)}
            for eval_set in eval_sets if world.is_main else ():
                metrics = evaluate(model, task, eval_set, pad_id=pad_id, batch_size=settings.eval_batch_size,
                                   precision=precision)
                record.update({f"{eval_set.name}/{k}": v for k, v in metrics.items()})
            record = from_main(record, world)  # so every rank takes the same best epoch and early stop
            result.history.append(record)
            _log(record, outputs.log_file, stepper.writer, stepper.step)
            if world.is_main:
                log.info("epoch %d: %s", epoch, ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                                           for k, v in record.items()))
            if eval_sets and not run.improved(record[f"{eval_sets[0].name}/{main_metric}"], main_metric, record):
                patience = settings.early_stopping_patience
                if patience is not None and run.stale >= patience:
                    log.info("early stopping: %s has not improved for %d epochs", main_metric, run.stale)
                    break
    finally:
        stepper.close()
    if outputs.curves_file is not None:
        plot_finetuning_curves(outputs.curves_file, stepper.losses, result.history, [s.name for s in eval_sets],
                               main_metric)
    if not eval_sets and outputs.save_best is not None:
        outputs.save_best(model, result.history[-1] if result.history else {})
    result.train_seconds = time.perf_counter() - started + run.earlier_seconds
    return result


@dataclass
class _Progress:
    """Where a run stands between optimizer steps, and its checkpoints: epoch, the epoch's batch order and how
    many of its batches are done, the best metric and model so far, the history. Restoring all of it with the
    weights, optimizer, schedule, loss scaler and every random generator (checkpointing.rng_state) makes the
    resumed run repeat the uninterrupted one bit for bit."""

    stepper: _Stepper
    generator: torch.Generator
    settings: TrainSettings
    outputs: RunOutputs
    result: TrainResult = field(default_factory=lambda: TrainResult(None, None))
    epoch: int = 1
    batches: list[list[int]] | None = None  # the current epoch's, once drawn
    done: int = 0  # batches of the current epoch already trained on
    tally: tuple[float, int] = (0.0, 0)  # (summed loss, steps) of the current epoch
    stale: int = 0
    best_model: dict | None = None  # a CPU copy of the best weights: the saved model does not survive a kill
    best_record: dict | None = None
    earlier_seconds: float = 0.0

    def train_epoch(self, features: list[Feature], epoch: int) -> float:
        if self.epoch != epoch or self.batches is None:  # a fresh epoch, not the interrupted one
            self.epoch, self.done, self.tally = epoch, 0, (0.0, 0)
            self.batches = _epoch_batches(features, self.settings, self.generator)
        started = time.perf_counter()
        loss = self.stepper.epoch(features, self.batches, epoch, start=self.done, tally=self.tally,
                                  after_step=lambda done, tally: self._after_step(done, tally, started))
        self.batches = None
        return loss

    def _after_step(self, done: int, tally: tuple[float, int], started: float) -> None:
        self.done, self.tally = done, tally
        every, folder = self.settings.save_every, self.outputs.checkpoints
        if folder is not None and every and self.stepper.step % every == 0:
            save_checkpoint(folder, self.stepper.step, self.state(), keep=self.settings.keep_checkpoints)

    def improved(self, value: float, metric: str, record: dict) -> bool:
        """Whether an epoch's main metric `value` beats the best so far. If it does, its epoch becomes the best
        one, saved (outputs.save_best) and, for checkpoints, copied; if not, one more epoch without progress."""
        if not _better(value, self.result.best_metric, metric):
            self.stale += 1
            return False
        self.result.best_metric, self.result.best_epoch, self.stale = value, record["epoch"], 0
        if self.outputs.checkpoints is not None and self.settings.save_every:
            self.best_model = {k: v.detach().to("cpu", copy=True) for k, v in self.stepper.model.state_dict().items()}
            self.best_record = record
        if self.outputs.save_best is not None:
            self.outputs.save_best(self.stepper.model, record)
        return True

    def state(self) -> dict:
        s = self.stepper
        return {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                "scheduler": s.schedule.state_dict(), "scaler": s.scaler.state_dict(), "rng": rng_state(),
                "generator": self.generator.get_state(), "step": s.step, "losses": s.losses, "epoch": self.epoch,
                "batches": self.batches, "done": self.done, "tally": self.tally, "stale": self.stale,
                "best_metric": self.result.best_metric, "best_epoch": self.result.best_epoch,
                "history": self.result.history, "best_model": self.best_model,
                "best_record": self.best_record, "settings": self.outputs.run_settings or {}}

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint; the best model and the history are written again into the new run folder."""
        s = self.stepper
        s.optimizer.load_state_dict(state["optimizer"])
        s.schedule.load_state_dict(state["scheduler"])
        s.scaler.load_state_dict(state["scaler"])
        s.step, s.losses = state["step"], list(state["losses"])
        s.bar.update(s.step)
        self.result = TrainResult(state["best_metric"], state["best_epoch"], list(state["history"]))
        self.epoch, self.batches, self.done = state["epoch"], state["batches"], state["done"]
        self.tally, self.stale = tuple(state["tally"]), state["stale"]
        self.best_model, self.best_record = state["best_model"], state["best_record"]
        self.earlier_seconds = self.result.history[-1]["elapsed_s"] if self.result.history else 0.0
        if self.best_model is not None and self.outputs.save_best is not None:
            s.model.load_state_dict(self.best_model)
            self.outputs.save_best(s.model, self.best_record)
        s.model.load_state_dict(state["model"])
        for step, loss in s.losses if s.writer is not None else ():
            s.writer.add_scalar("train/loss", loss, step)
        for record in self.result.history:
            _log(record, self.outputs.log_file, s.writer, record["step"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])  # last: nothing above may draw a random number after it


def _better(value: float, best: float | None, metric: str) -> bool:
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    return best is None or sign * value > sign * best


def _loss_options(task: TaskFamily, features: list[Feature], settings: TrainSettings, steps_per_epoch: int) -> dict:
    """The task loss's keyword options. Token tasks (whose family has `scored_tokens`): "batch_mean" averages
    the loss over the scored tokens of each batch; "constant" divides each batch's summed loss by one
    constant, the mean number of scored tokens per batch over the training set. Length-grouped batches make
    the per-batch count swing from a few tokens (a batch of headlines) to hundreds, so a batch mean gives the
    tokens of short sentences many times the weight of the others; the constant keeps every token's weight
    equal, as random batches do on average. "auto" = "constant" when grouping by length, else "batch_mean"
    (what `transformers` computes)."""
    if settings.token_loss not in ("auto", "constant", "batch_mean"):
        raise ValueError(f"token_loss must be auto, constant or batch_mean, not {settings.token_loss!r}")
    constant = settings.token_loss == "constant" or (settings.token_loss == "auto" and settings.group_by_length)
    if not (constant and hasattr(task, "scored_tokens")):
        return {}
    per_batch = max(1.0, sum(task.scored_tokens(f) for f in features) / steps_per_epoch)
    log.info("token loss: summed per batch / %.1f (mean scored tokens per batch)", per_batch)
    return {"per_batch_tokens": per_batch}


def _loss_shares(task: TaskFamily, parts: list[list[Feature]], loss_options: dict) -> list[float]:
    """The weight of each micro-batch's loss such that the weighted sum is the whole batch's loss. A loss that
    averages over examples weighs each part by its share of the examples; a token loss averaged within the batch
    ("batch_mean") by its share of the scored tokens; a token loss divided by a constant (`per_batch_tokens`) is
    a sum already, so its parts add up unweighted."""
    if "per_batch_tokens" in loss_options:
        return [1.0] * len(parts)
    if hasattr(task, "scored_tokens"):
        units = [sum(task.scored_tokens(f) for f in part) for part in parts]
        if sum(units):
            return [u / sum(units) for u in units]
    return [len(part) / sum(len(p) for p in parts) for part in parts]


def _epoch_batches(features: list[Feature], settings: TrainSettings, generator: torch.Generator) -> list[list[int]]:
    """One epoch's batches of feature indices, in a fresh random order."""
    if settings.group_by_length:
        return length_grouped_batches([f.length for f in features], settings.batch_size, generator)
    order = torch.randperm(len(features), generator=generator).tolist()
    return [order[i : i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]


@dataclass
class _Stepper:
    """Optimizer steps on batches of features, counted over the whole run (which may end mid-epoch)."""

    model: torch.nn.Module
    task: TaskFamily
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    pad_id: int
    max_grad_norm: float
    grad_accum_steps: int
    loss_options: dict
    writer: object
    total_steps: int
    bar: tqdm
    precision: Precision = "fp32"
    world: World = World()
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss) for curves.png

    def __post_init__(self) -> None:
        device = next(self.model.parameters()).device
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")  # fp16 grads underflow
        # One process: the rows a step looked up are all its tables' gradients can hold (see LookupGradients).
        self.lookup_gradients = LookupGradients(self.model, track_rows=self.world.size == 1)

    def epoch(self, features: list[Feature], batches: list[list[int]], epoch: int, *, start: int = 0,
              tally: tuple[float, int] = (0.0, 0), after_step=None) -> float:
        """Train on batches[start:] (until the planned step count); returns the epoch's mean loss. `tally`:
        (summed loss, steps) of the batches before `start`; `after_step(batches done, tally)` follows every step."""
        self.model.train()
        running, seen = tally
        for index in range(start, len(batches)):
            if self.step >= self.total_steps:
                break
            self.lookup_gradients.zero(self.optimizer)
            loss = self.accumulate_gradients([features[i] for i in batches[index]])
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
            clip_gradients(self.model.parameters(), self.max_grad_norm, self.lookup_gradients)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.schedule.step()
            self.step += 1
            running, seen = running + loss, seen + 1
            self.losses.append((self.step, loss))
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{running / seen:.4f}")
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, self.step)
                self.writer.add_scalar("train/learning_rate", self.schedule.get_last_lr()[0], self.step)
            if after_step is not None:
                after_step(index + 1, (running, seen))
        return running / max(seen, 1)

    def accumulate_gradients(self, batch: list[Feature]) -> float:
        """Backward through `batch` in `grad_accum_steps` micro-batches (each padded to its own longest), adding
        their gradients up; returns the batch's loss. Each micro-batch's loss is weighted by its share of the
        batch (`_loss_shares`), so the summed gradient is the one the whole batch gives in one pass.

        Under torchrun the batch is cut into processes x grad_accum_steps micro-batches, each rank takes its
        own consecutive grad_accum_steps of them, and the gradients are summed over the ranks
        (distributed.sum_gradients): the shares are of the whole batch, so the sum is its gradient again."""
        device = next(self.model.parameters()).device
        world = self.world
        size = math.ceil(len(batch) / (world.size * self.grad_accum_steps))
        parts = [batch[i : i + size] for i in range(0, len(batch), size)]
        shares = _loss_shares(self.task, parts, self.loss_options)
        mine = slice(world.rank * self.grad_accum_steps, (world.rank + 1) * self.grad_accum_steps)
        total = 0.0
        for part, share in zip(parts[mine], shares[mine], strict=True):
            if share == 0:  # no scored token in this micro-batch: nothing to learn, and its mean would be 0/0
                continue
            inputs, labels = _to(collate(part, self.pad_id), device), _to(self.task.labels(part), device)
            with autocast(self.precision, device):
                loss = self.task.loss(self.model(**inputs), labels, **self.loss_options) * share
            self.scaler.scale(loss).backward()
            total += loss.item()
        sum_gradients(self.model, world)  # before the scaler unscales: every rank then sees the same overflow
        return float(all_reduce_sum(torch.tensor([total], dtype=torch.float64), world))

    def close(self) -> None:
        self.lookup_gradients.close()
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _refuse_outer_autocast(model: torch.nn.Module) -> None:
    """Autocast keeps its bf16/fp16 copies of the weights until the outermost autocast context exits, so a
    training loop run inside one would go on computing with the first step's weights (silently: the loss
    stalls). train() enters autocast around each forward itself."""
    device = next(model.parameters()).device.type
    if torch.is_autocast_enabled(device):
        raise ValueError("train() was called inside an autocast context, which would freeze the weights it "
                         "computes with at their first-step values; pass precision='bf16' (or 'fp16') instead")


def plot_finetuning_curves(path: Path, losses: list[tuple[int, float]], history: list[dict], eval_names: list[str],
                           metric: str) -> Path:
    """Training loss per step (left) and each evaluation set's main metric after every epoch (right)."""
    loss_curves = [Curve("train loss (per step)", [s for s, _ in losses], [v for _, v in losses], alpha=0.6)]
    steps = [r["step"] for r in history]
    loss_curves.append(Curve("train loss (epoch mean)", steps, [r["train_loss"] for r in history], "o-"))
    scores = [Curve(f"{name} {metric}", steps, [r.get(f"{name}/{metric}", math.nan) for r in history], "o-")
              for name in eval_names]
    return plot_curves(path, losses=loss_curves, scores=scores, score_label=metric,
                       titles=("fine-tuning: training loss", f"{metric} after each epoch" if scores else
                               "no validation set"))


def _tensorboard(directory: Path | None):
    if directory is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: JSONL logging always happens
        log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(directory))


def _log(record: dict, log_file: Path | None, writer, step: int) -> None:
    if log_file is not None:
        with Path(log_file).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    if writer is not None:
        for key, value in record.items():
            if "/" in key and isinstance(value, (int, float)):
                writer.add_scalar(key, value, step)


def load_task_model(name_or_path: str | Path, **overrides) -> tuple[torch.nn.Module, TaskFamily]:
    """A fine-tuned model saved by `finetune` and its task family, rebuilt from config.json. `name_or_path`: a
    folder or a Hub id (pretrained.resolve_model), as for every other loader."""
    directory = resolve_model(name_or_path)
    settings = saved_task_settings(directory)
    if not settings and "task" not in overrides:
        raise CheckpointError(f"{directory}/config.json: no {TASK_CONFIG_KEY!r} entry, so this is not a model saved by "
                              f"`bertforge finetune`; fine-tune it first (bertforge finetune --model {name_or_path} "
                              "--task ...), or use classify/ner/qa for a task model from elsewhere")
    settings = {**settings, **{k: v for k, v in overrides.items() if v is not None}}
    task = family(settings.pop("task"), **settings)
    model = load_model(directory, task.model_class)
    if getattr(model, "labels", None) is not None and hasattr(task, "label_names"):
        task.label_names = list(model.labels)
    return model, task
