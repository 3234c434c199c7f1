"""`bertforge pretrain`: masked-LM + next-sentence pre-training (BERT §3.1, Appendix A.2).

The objective is a setting: mlm_nsp (BERT), mlm (no NSP) or ltr (a left-to-right LM: causal attention,
every token predicts the next one, no NSP), the three pre-training rows of the paper's ablation (Table 5).

The loop, top to bottom: build the global batch from the shards -> mask it with a generator seeded by
the step -> this rank's rows, split into micro-batches -> forward (MLM logits only at masked positions)
-> loss normalised by the *global* number of masked tokens and examples, so the gradient is the same
for any number of processes or accumulation steps -> clip -> optimizer and schedule step -> log,
evaluate, checkpoint. Every random draw is either seeded by the step or saved in the checkpoint, which
is why a resumed run repeats an uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from bertforge.config import BertConfig
from bertforge.data.masking import (
    IGNORE_INDEX,
    MaskedBatch,
    MaskingSettings,
    continuation_table,
    mask_tokens,
    replacement_vocabulary,
)
from bertforge.data.pretraining import (
    DataPosition,
    ExampleSettings,
    ExampleStream,
    PreTrainingBatch,
    collate,
    collate_packed,
)
from bertforge.data.shards import PreparedCorpus
from bertforge.files import write_text_atomic
from bertforge.hardware import keep_freed_memory, matmul_row_multiple
from bertforge.heads import BertForPreTraining, BertLMHeadModel, CausalLMOutput, PreTrainingOutput
from bertforge.options import resolve_device
from bertforge.precision import Precision, autocast
from bertforge.training.checkpointing import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from bertforge.training.distributed import World, all_reduce_sum, join_world
from bertforge.training.initialization import init_local_attention, init_positions_sinusoidal
from bertforge.training.lamb import Lamb
from bertforge.training.metrics import MetricsLogger
from bertforge.training.optim import build_adamw, build_schedule, clip_gradients, parameter_groups
from bertforge.training.pretrain_settings import (
    CorpusSettings,
    ModelSettings,
    OptimSettings,
    PretrainConfig,
    ReportSettings,
    RunSettings,
)
from bertforge.training.run_folder import open_run
from bertforge.training.vocab_loss import summed_cross_entropy

log = logging.getLogger(__name__)

EVAL_SEED = 20181011  # held-out masks are fixed, so evaluations are comparable across steps and runs


@dataclass
class PretrainResult:
    output_dir: Path
    step: int
    losses: dict[int, float]  # training loss of every step run by this call
    evaluations: dict[int, dict]  # step -> held-out metrics (step 0 = untrained)
    stopped: str  # "finished", "time_limit", "nan", or "stop_after"
    model_dir: Path | None = None


# ----- pieces of the loop -------------------------------------------------------------------------
def build_model(cfg: PretrainConfig, vocab_size: int) -> BertForPreTraining | BertLMHeadModel:
    changes = {"vocab_size": vocab_size, "max_position_embeddings": max(512, cfg.corpus.max_length),
               **cfg.model.model_overrides}
    if cfg.model.dropout is not None:
        changes.update(hidden_dropout=cfg.model.dropout, attention_dropout=cfg.model.dropout)
    config = BertConfig.from_preset(cfg.model.preset, **changes)
    if cfg.corpus.objective == "ltr":
        model = BertLMHeadModel(config)
    else:
        model = BertForPreTraining(config, nsp=cfg.corpus.objective == "mlm_nsp")
    if cfg.model.position_init == "sinusoidal" and config.position_embedding_type == "learned":
        init_positions_sinusoidal(model.bert.embeddings.position_embeddings.weight, config.initializer_range)
        if cfg.model.attention_init == "local":
            init_local_attention(model)
    elif cfg.model.attention_init == "local":
        log.warning("attention_init local skipped: it is built from the learned position table, and this model's "
                    "positions are %s", config.position_embedding_type)
    if cfg.model.init_from is not None:
        _load_initial_weights(model, cfg.model.init_from)
    return model


def _load_initial_weights(model: BertForPreTraining, source: Path) -> None:
    """Weights for a second phase (e.g. length 512 after 128): a run/checkpoint or a Hugging Face folder."""
    if any((source / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        from bertforge.checkpoint import load_hf_state_dict, read_weights

        state, path = read_weights(source)
        load_hf_state_dict(model, state, source=str(path))
    else:
        model.load_state_dict(load_checkpoint(source)["model"])


def build_optimizer(cfg: PretrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    betas = (0.9, cfg.optim.adam_beta2)
    if cfg.optim.optimizer == "lamb":
        return Lamb(parameter_groups(model, cfg.optim.weight_decay), lr=cfg.optim.learning_rate, betas=betas)
    return build_adamw(model, lr=cfg.optim.learning_rate, weight_decay=cfg.optim.weight_decay, betas=betas)


class BatchMasker:
    """Masks a batch with the given settings and a generator seeded per (seed, step); for the ltr
    objective the targets are the next tokens instead (nothing is masked)."""

    def __init__(self, settings: MaskingSettings, tokenizer, *, left_to_right: bool = False) -> None:
        self.left_to_right = left_to_right
        self.settings = settings
        self.mask_id = tokenizer.mask_id
        self.replacements = replacement_vocabulary(tokenizer.vocab_size, tokenizer.special_ids)
        self.continuation = continuation_table(tokenizer.vocab()) if settings.whole_word else None

    @classmethod
    def for_training(cls, cfg: PretrainConfig, tokenizer) -> BatchMasker:
        settings = MaskingSettings(rate=cfg.corpus.masking_rate, max_predictions=cfg.corpus.max_predictions,
                                   whole_word=cfg.corpus.whole_word_masking)
        return cls(settings, tokenizer, left_to_right=cfg.corpus.objective == "ltr")

    def __call__(self, batch: PreTrainingBatch, seed: int) -> MaskedBatch:
        if self.left_to_right:
            return next_token_targets(batch)
        generator = torch.Generator().manual_seed(seed)
        return mask_tokens(batch.input_ids, batch.special_tokens_mask, mask_id=self.mask_id,
                           replacement_ids=self.replacements, settings=self.settings, generator=generator,
                           continuation=self.continuation)


def next_token_targets(batch: PreTrainingBatch) -> MaskedBatch:
    """Left-to-right LM targets in the MaskedBatch layout: position t is trained to predict token t + 1,
    wherever t + 1 is a real token (the last real token and padding predict nothing)."""
    labels = torch.full_like(batch.input_ids, IGNORE_INDEX)
    labels[:, :-1] = batch.input_ids[:, 1:]
    positions = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    positions[:, :-1] = batch.attention_mask[:, 1:].bool()
    labels[~positions] = IGNORE_INDEX
    return MaskedBatch(batch.input_ids, labels, positions)


def losses(out: PreTrainingOutput | CausalLMOutput, labels: torch.Tensor, nsp_labels: torch.Tensor,
           shown_mask: torch.Tensor | None = None, *, mlm_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Summed losses and correct counts of one (micro-)batch; labels are those at the masked positions
    (for the ltr objective the "mlm" statistics are those of next-token prediction). `shown_mask` ([N]
    bool) marks the selected positions whose input shows [MASK]: accuracy there is the honest figure,
    since the 10% left unchanged are answered by copying the input. `mlm_weight`: "mlm_term" is the MLM sum
    times it, the term a training loss backpropagates as it is (its gradient comes weighted from the forward:
    vocab_loss.summed_cross_entropy); "mlm_sum" stays the plain sum."""
    if isinstance(out, PreTrainingOutput):
        mlm_logits, nsp_logits = out.mlm_logits, out.nsp_logits
    elif isinstance(out, CausalLMOutput):  # the ltr objective: next-token logits, no NSP
        mlm_logits, nsp_logits = out.logits, None
    else:
        raise TypeError(f"pre-training losses need a PreTrainingOutput or CausalLMOutput, not {type(out).__name__}")
    bias = out.mlm_bias if isinstance(out, PreTrainingOutput) else None  # the decoder's, when left to the loss
    count = labels.numel()
    padded = F.pad(labels, (0, len(mlm_logits) - count), value=IGNORE_INDEX)  # the model's padding rows (row_multiple)
    mlm_term, correct = summed_cross_entropy(mlm_logits, padded, bias, weight=mlm_weight,
                                             ignore_index=IGNORE_INDEX)  # [N', V] -> scalar, [N']
    correct = correct[:count]
    stats = {"mlm_term": mlm_term, "mlm_sum": mlm_term.detach() / mlm_weight, "mlm_correct": correct.sum(),
             "mlm_count": torch.tensor(count)}
    if shown_mask is not None:
        stats.update(mask_correct=(correct & shown_mask).sum(), mask_count=shown_mask.sum())
    if nsp_logits is not None:
        nsp_logits = nsp_logits.float()  # [B, 2]
        stats.update(nsp_sum=F.cross_entropy(nsp_logits, nsp_labels, reduction="sum"),
                     nsp_correct=(nsp_logits.argmax(-1) == nsp_labels).sum(),
                     nsp_count=torch.tensor(nsp_labels.numel()))
    return stats


STAT_KEYS = ("mlm_sum", "mlm_correct", "mlm_count", "mask_correct", "mask_count", "nsp_sum", "nsp_correct",
             "nsp_count")


def _stat_vector(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.tensor([float(stats[k].detach()) if k in stats else 0.0 for k in STAT_KEYS], dtype=torch.float64)


def summarize(totals: torch.Tensor) -> dict[str, float | None]:
    """Summed statistics -> mean losses and accuracies."""
    t = dict(zip(STAT_KEYS, totals.tolist(), strict=True))
    mlm_loss = t["mlm_sum"] / max(t["mlm_count"], 1)
    out = {"mlm_loss": mlm_loss, "mlm_accuracy": t["mlm_correct"] / max(t["mlm_count"], 1)}
    if t["mask_count"]:
        out["mlm_mask_accuracy"] = t["mask_correct"] / t["mask_count"]
    if t["nsp_count"]:
        out.update(nsp_loss=t["nsp_sum"] / t["nsp_count"], nsp_accuracy=t["nsp_correct"] / t["nsp_count"])
    out["loss"] = mlm_loss + (out.get("nsp_loss") or 0.0)
    return out


def model_inputs(batch: PreTrainingBatch, masked: MaskedBatch, device: torch.device, model: torch.nn.Module,
                 precision: Precision) -> dict[str, torch.Tensor | bool | int]:
    """The model's inputs for a (masked) batch; packed rows add their window mask and positions. A masked-LM
    model leaves its decoder bias to `losses` (BertForPreTraining's bias_in_loss) and pads its rows where new
    matmul shapes cost a kernel build (its row_multiple)."""
    inputs = {"input_ids": masked.input_ids.to(device), "attention_mask": batch.model_attention_mask().to(device),
              "token_type_ids": batch.token_type_ids.to(device),
              "masked_positions": masked.masked_positions.to(device)}
    if isinstance(model, BertForPreTraining):
        inputs.update(bias_in_loss=True, row_multiple=matmul_row_multiple(precision, device))
    if batch.position_ids is not None:
        inputs["position_ids"] = batch.position_ids.to(device)
    return inputs


def shown_mask(masked: MaskedBatch, mask_id: int) -> torch.Tensor:
    """[N] bool over the selected positions (row-major): True where the input shows [MASK]."""
    return masked.input_ids[masked.masked_positions] == mask_id


@dataclass
class HeldOut:
    """The fixed evaluation set. `mlm`: windows of the held-out documents, one document per row, masked at
    BERT's 15% with fixed seeds whatever the run's own masking (next-token targets for ltr), so runs with
    other recipes are scored on the same predictions. `nsp`: sentence pairs, for models with NSP."""

    mlm: list[tuple[PreTrainingBatch, MaskedBatch]]
    nsp: list[PreTrainingBatch]
    mask_id: int

    def __bool__(self) -> bool:
        return bool(self.mlm)


EVAL_ROWS_PER_BATCH = 32  # fixed, so the evaluation set does not change with the training batch size


@torch.no_grad()
def evaluate(model: BertForPreTraining | BertLMHeadModel, heldout: HeldOut, device: torch.device,
             precision: Precision = "fp32") -> dict[str, float | None]:
    """Held-out MLM loss and accuracy (all selected positions, and where the input shows [MASK]) and
    NSP loss/accuracy."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
    for batch, masked in heldout.mlm:
        with autocast(precision, device):
            out = model(**model_inputs(batch, masked, device, model, precision))
        labels = masked.labels[masked.masked_positions].to(device)
        shown = None if isinstance(model, BertLMHeadModel) else shown_mask(masked, heldout.mask_id).to(device)
        stats = losses(out, labels, batch.nsp_labels.to(device), shown)
        stats.pop("nsp_sum", None), stats.pop("nsp_correct", None), stats.pop("nsp_count", None)
        totals += _stat_vector(stats)
    for batch in heldout.nsp:
        with autocast(precision, device):
            out = model(batch.input_ids.to(device), batch.attention_mask.to(device), batch.token_type_ids.to(device),
                        masked_positions=torch.zeros_like(batch.attention_mask, dtype=torch.bool, device=device))
        nsp_logits = out.nsp_logits.float()
        labels = batch.nsp_labels.to(device)
        totals += _stat_vector({"nsp_sum": F.cross_entropy(nsp_logits, labels, reduction="sum"),
                                "nsp_correct": (nsp_logits.argmax(-1) == labels).sum(),
                                "nsp_count": torch.tensor(labels.numel())})
    model.train(was_training)
    return summarize(totals)


def heldout_batches(corpus: PreparedCorpus, cfg: PretrainConfig, tokenizer) -> HeldOut:
    """The first examples of the held-out shards with fixed masks (see HeldOut)."""
    shards = list(corpus.shards("heldout"))
    if not shards or cfg.report.eval_batches <= 0:
        return HeldOut([], [], tokenizer.mask_id)
    ids = {"cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id, "pad_id": tokenizer.pad_id}
    windows = ExampleSettings(cfg.corpus.max_length, short_seq_prob=0.0, nsp=False)
    masking = MaskingSettings(rate=0.15, max_predictions=math.ceil(0.15 * cfg.corpus.max_length))  # BERT §3.1
    masker = BatchMasker(masking, tokenizer, left_to_right=cfg.corpus.objective == "ltr")
    mlm = []
    for i, batch in enumerate(_fixed_batches(shards, windows, cfg.report.eval_batches, ids)):
        mlm.append((batch, masker(batch, EVAL_SEED + i)))
    nsp = []
    if cfg.corpus.objective == "mlm_nsp":
        pairs = ExampleSettings(cfg.corpus.max_length, cfg.corpus.short_seq_prob, nsp=True)
        nsp = _fixed_batches(shards, pairs, cfg.report.eval_batches, ids)
    return HeldOut(mlm, nsp, tokenizer.mask_id)


def _fixed_batches(shards, settings: ExampleSettings, count: int, ids: dict) -> list[PreTrainingBatch]:
    stream = ExampleStream(shards, settings, seed=EVAL_SEED)
    out = []
    for _ in range(count):
        out.append(collate(stream.take(EVAL_ROWS_PER_BATCH), **ids))
        if stream.position.epoch > 0:  # a small held-out split: do not repeat examples
            break
    return out


def collate_examples(examples, settings: ExampleSettings, tokenizer) -> PreTrainingBatch:
    ids = {"cls_id": tokenizer.cls_id, "sep_id": tokenizer.sep_id, "pad_id": tokenizer.pad_id}
    return collate_packed(examples, **ids) if settings.packed else collate(examples, **ids)


# ----- the loop -----------------------------------------------------------------------------------
@dataclass
class Trainer:
    """What one optimizer step needs; `step()` runs one on a global batch and returns its summed statistics."""

    cfg: PretrainConfig
    model: torch.nn.Module
    net: torch.nn.Module  # the model as called: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    world: World
    device: torch.device
    mask_id: int
    ddp: torch.nn.parallel.DistributedDataParallel | None = None  # no_sync() lives here, not on a compiled net

    def forward_backward(self, batch: PreTrainingBatch, masked: MaskedBatch) -> torch.Tensor:
        """Gradients of this rank's rows, micro-batch by micro-batch; losses are normalised by the *global*
        number of masked tokens and examples, so the gradient is the same for any number of processes or
        accumulation steps."""
        cfg, world = self.cfg, self.world
        total_masked = int(masked.masked_positions.sum())  # over the global batch
        local = cfg.optim.batch_size // world.size
        micro = local // cfg.optim.grad_accum_steps
        batch, masked = batch.slice(world.rank * local, (world.rank + 1) * local), _slice_masked(
            masked, slice(world.rank * local, (world.rank + 1) * local))
        totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
        for m in range(cfg.optim.grad_accum_steps):
            part_batch = batch.slice(m * micro, (m + 1) * micro)
            part = _slice_masked(masked, slice(m * micro, (m + 1) * micro))
            with autocast(cfg.optim.precision, self.device):
                out = self.net(**model_inputs(part_batch, part, self.device, self.model, cfg.optim.precision))
            shown = None if cfg.corpus.objective == "ltr" else shown_mask(part, self.mask_id).to(self.device)
            stats = losses(out, part.labels[part.masked_positions].to(self.device),
                           part_batch.nsp_labels.to(self.device), shown, mlm_weight=1 / max(total_masked, 1))
            loss = stats["mlm_term"]  # the MLM sum / total_masked, its gradient made so in the forward
            if "nsp_sum" in stats:
                loss = loss + stats["nsp_sum"] / cfg.optim.batch_size
            last = m == cfg.optim.grad_accum_steps - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                # DDP averages gradients over ranks, hence x world size.
                self.scaler.scale(loss * world.size).backward()
            totals += _stat_vector(stats)
        return totals

    def apply_gradients(self) -> float:
        self.scaler.unscale_(self.optimizer)
        grad_norm = clip_gradients(self.model.parameters(), self.cfg.optim.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        return float(grad_norm)


def measure_step_seconds(trainer: Trainer, stream: ExampleStream, masker: BatchMasker, tokenizer,
                         count: int = 6) -> float:
    """Seconds per optimizer step on real batches, timed on a throw-away copy of the model and optimizer
    (the run itself, its data position and its random state are untouched)."""
    saved_rng = rng_state()
    model = copy.deepcopy(trainer.model)
    probe = dataclasses.replace(trainer, model=model, net=model, optimizer=build_optimizer(trainer.cfg, model),
                                scheduler=None, ddp=None)
    probe_stream = ExampleStream(stream.shards, stream.settings, seed=stream.seed,
                                 position=dataclasses.replace(stream.position))
    timings = []
    for i in range(count):
        started = time.perf_counter()
        batch = collate_examples(probe_stream.take(trainer.cfg.optim.batch_size), stream.settings, tokenizer)
        probe.forward_backward(batch, masker(batch, i))
        probe.apply_gradients()
        timings.append(time.perf_counter() - started)
    set_rng_state(saved_rng)
    return statistics.median(timings[1:])  # the first step pays for one-off allocations


def plan_steps(cfg: PretrainConfig, step_seconds: float, eval_seconds: float, spent_seconds: float) -> int:
    """Steps that fit the wall-clock budget with its ~10 evaluations, so the schedule ends at the budget
    (a step-based schedule cut short by a timer never decays its learning rate)."""
    budget = cfg.job.max_minutes * 60 * 0.97 - spent_seconds  # 3% for checkpoints and the export
    if cfg.report.eval_every is None:  # plan() will evaluate 10 times
        return max(10, int((budget - 10 * eval_seconds) / step_seconds))
    return max(10, int(budget / (step_seconds + eval_seconds / cfg.report.eval_every)))


def train(cfg: PretrainConfig, *, on_step: Callable[[int, float, torch.nn.Module], None] | None = None,
          stop_after: int | None = None) -> PretrainResult:
    """Run (or resume) pre-training. `on_step(step, loss, model)` is called after every optimizer step;
    `stop_after` ends the run after that step without a final checkpoint (to simulate a crash)."""
    started = time.monotonic()
    resumed_from = open_run(cfg)  # options, positions, the run folder's rules; the checkpoint to resume from
    device, world = _devices(cfg)
    corpus = PreparedCorpus.open(cfg.corpus.data)
    tokenizer = corpus.tokenizer()
    ckpt_dir = cfg.job.output_dir / "checkpoints"

    state = load_checkpoint(resumed_from) if resumed_from is not None else None
    if state is not None and cfg.optim.steps is None:
        cfg.plan(state["config"]["steps"])  # the planned length of the interrupted run
    elif cfg.job.resume and state is None:
        log.info("no checkpoint in %s yet: starting from step 0", ckpt_dir)

    torch.manual_seed(cfg.job.seed)  # the initial weights
    model = build_model(cfg, tokenizer.vocab_size).to(device)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.optim.precision == "fp16")
    stream = ExampleStream(list(corpus.shards("train")), cfg.corpus.example_settings(), seed=cfg.job.seed)
    masker = BatchMasker.for_training(cfg, tokenizer)
    heldout = heldout_batches(corpus, cfg, tokenizer) if world.is_main else HeldOut([], [], tokenizer.mask_id)
    ddp = None
    if world.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    trainer = Trainer(cfg, model, ddp or model, optimizer, None, scaler, world, device, tokenizer.mask_id, ddp)

    evaluations: dict[int, dict] = {}
    eval_seconds = 0.0
    if state is None and heldout:
        # One batch first, untimed: the one-off set-up of an evaluation (compiling the vocabulary loss's kernels,
        # 3-6 s; building the matmul kernels of its shapes) would otherwise count in every evaluation a budget
        # plan reserves time for.
        evaluate(model, HeldOut(heldout.mlm[:1], heldout.nsp[:1], heldout.mask_id), device, cfg.optim.precision)
        eval_started = time.perf_counter()
        evaluations[0] = evaluate(model, heldout, device, cfg.optim.precision)
        eval_seconds = time.perf_counter() - eval_started
    fitted = _plan(cfg, trainer, stream, masker, tokenizer, eval_seconds, spent_seconds=time.monotonic() - started)
    trainer.scheduler = _schedule(cfg, optimizer)
    replan = _Replan.for_run(cfg, started, eval_seconds) if fitted else None
    step = _restore(state, trainer, stream) if state is not None else 0
    if cfg.optim.compile:
        trainer.net = torch.compile(trainer.net)
    logger = _open_log(cfg, trainer, tokenizer, step, evaluations, resumed_from) if world.is_main else None
    return _loop(cfg, trainer, stream, masker, tokenizer, heldout, logger, step, evaluations, resumed_from,
                 replan, on_step=on_step, stop_after=stop_after)


def _devices(cfg: PretrainConfig) -> tuple[torch.device, World]:
    """This process's device and its place among the processes; fixes `auto` precision for the device."""
    if cfg.job.threads:
        torch.set_num_threads(cfg.job.threads)
    keep_freed_memory()
    device, world = join_world(resolve_device(cfg.job.device))
    cfg.use_device(device)  # `auto` precision -> what this device computes
    if cfg.optim.batch_size % (world.size * cfg.optim.grad_accum_steps):
        raise ValueError(f"batch_size {cfg.optim.batch_size} must be divisible by processes ({world.size}) x "
                         f"grad_accum_steps ({cfg.optim.grad_accum_steps})")
    return device, world


def _plan(cfg: PretrainConfig, trainer: Trainer, stream: ExampleStream, masker: BatchMasker, tokenizer,
          eval_seconds: float, *, spent_seconds: float) -> bool:
    """Fix the step count: as set, fitted to the wall-clock budget from a measured step, or 1000. True when
    it was fitted to the budget (the run fits it again from its own steps: _Replan)."""
    if cfg.optim.steps is not None:
        cfg.plan(cfg.optim.steps)
        return False
    if cfg.job.max_minutes:
        step_seconds = measure_step_seconds(trainer, stream, masker, tokenizer)
        planned = _agreed(plan_steps(cfg, step_seconds, eval_seconds, spent_seconds), trainer.world)
        print(f"planned {planned:,} steps for {cfg.job.max_minutes:.1f} min ({step_seconds:.3f} s per step measured)")
        cfg.plan(planned)
        return True
    cfg.plan(1000)
    return False


@dataclass
class _Replan:
    """Fit the step count to the wall-clock budget once more, from the run's own steps.

    The first plan times a handful of steps on a fresh copy of the model before the run, and that can be off
    by a quarter (one-off kernel set-up for new shapes, a machine still settling): measured once at 0.534 s
    per step where the run then took 0.43, so the schedule decayed to 0 and the run ended after 31 of its 40
    minutes. A plan that is too long is cut by the timer before its learning rate decays. Fitting again is
    done twice, at 5% and 20% of the plan: the first soon enough to correct a probe that was far off, the
    second from four times as many steps (the 5% sample once ran 5% slower than the rest of an hour, which
    then ended 4.5 minutes early). Both come before the first checkpoint, so every checkpoint holds the
    final plan and a resumed run repeats the uninterrupted one."""

    at: tuple[int, ...]  # fit again after each of these steps
    started: float  # time.monotonic() when the job started: the budget counts from there
    eval_seconds: float  # one held-out evaluation
    step_seconds: list[float] = field(default_factory=list)

    @classmethod
    def for_run(cls, cfg: PretrainConfig, started: float, eval_seconds: float) -> _Replan | None:
        first_checkpoint = min(cfg.optim.steps, cfg.report.save_every)
        fits = (max(20, cfg.optim.steps // 20), max(20, cfg.optim.steps // 5))
        at = sorted({step for step in fits if step < first_checkpoint})
        return cls(tuple(at), started, eval_seconds) if at else None

    def fit(self, cfg: PretrainConfig, trainer: Trainer, step: int) -> None:
        skipped = len(self.step_seconds) // 4  # the one-off set-up of the first steps
        settled = statistics.median(self.step_seconds[skipped:])
        world = trainer.world
        planned = step + _agreed(plan_steps(cfg, settled, self.eval_seconds,
                                            spent_seconds=time.monotonic() - self.started), world)
        before = cfg.optim.steps
        cfg.plan(planned)
        trainer.scheduler = _schedule(cfg, trainer.optimizer, after_step=step)
        if world.is_main:
            _write_options(cfg)
            first = step - len(self.step_seconds) + skipped + 1
            tqdm.write(f"re-planned {planned:,} steps (was {before:,}): {settled:.3f} s per step (median of steps "
                       f"{first}-{step})")


def _agreed(steps: int, world: World) -> int:
    """One step count for every process: the mean of what each measured (each times its own steps)."""
    return int(all_reduce_sum(torch.tensor([steps], dtype=torch.float64), world)) // world.size


def _schedule(cfg: PretrainConfig, optimizer: torch.optim.Optimizer, after_step: int = 0):
    return build_schedule(optimizer, cfg.optim.schedule, warmup_steps=cfg.optim.warmup_steps,
                          total_steps=cfg.optim.steps, after_step=after_step)


def _write_options(cfg: PretrainConfig) -> None:
    write_text_atomic(cfg.job.output_dir / "config.json", json.dumps(cfg.options(), indent=2))


def _restore(state: dict, trainer: Trainer, stream: ExampleStream) -> int:
    """Continue exactly where a checkpoint stopped; returns its step."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    stream.position = DataPosition(**state["position"])
    set_rng_state(state["rng"])
    return state["step"]


def _open_log(cfg: PretrainConfig, trainer: Trainer, tokenizer, step: int, evaluations: dict[int, dict],
              resumed_from: Path | None) -> MetricsLogger:
    """The run folder's tokenizer, config.json and metrics log (cut back to `step` on resume), and a summary line."""
    model, out_dir = trainer.model, cfg.job.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    _write_options(cfg)
    logger = MetricsLogger(out_dir, tensorboard=cfg.report.tensorboard)
    logger.truncate_after(step) if resumed_from else logger.jsonl.unlink(missing_ok=True)
    print(f"model: {cfg.model.preset} {model.config.num_layers}L H={model.config.hidden_size}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; recipe {cfg.job.recipe}, objective "
          f"{cfg.corpus.objective}{', packed rows' if cfg.corpus.packing else ''}, "
          f"masking {cfg.corpus.masking_rate:g}, "
          f"{cfg.optim.precision}; {trainer.world.size} process(es) on {trainer.device}"
          + (f"; resumed from {resumed_from}" if resumed_from else ""))
    if 0 in evaluations:
        logger.log(0, {**evaluations[0], "minutes": 0.0}, prefix="heldout")
        start = f"the model of {cfg.model.init_from}" if cfg.model.init_from else "untrained model"
        print(f"{start}, held-out: {_fmt(evaluations[0])}")
    return logger


def _loop(cfg: PretrainConfig, trainer: Trainer, stream: ExampleStream, masker: BatchMasker, tokenizer,
          heldout: HeldOut, logger: MetricsLogger | None, step: int, evaluations: dict[int, dict],
          resumed_from: Path | None, replan: _Replan | None, *, on_step, stop_after) -> PretrainResult:
    """Steps until the planned count, the wall-clock budget, a non-finite loss or `stop_after`."""
    model, world = trainer.model, trainer.world
    step_losses: dict[int, float] = {}
    stopped = "finished"
    bar = tqdm(total=cfg.optim.steps, initial=step, desc="pretrain", disable=not (world.is_main and cfg.job.progress),
               dynamic_ncols=True)
    model.train()
    report = _Report(cfg, trainer, logger, bar, heldout, evaluations)
    deadline = report.clock + cfg.job.max_minutes * 60 if cfg.job.max_minutes else math.inf
    while step < cfg.optim.steps:
        before = (dataclasses.replace(stream.position), rng_state())  # the state a NaN stop saves
        step_started = time.perf_counter()
        step += 1
        batch = collate_examples(stream.take(cfg.optim.batch_size), stream.settings, tokenizer)
        masked = masker(batch, cfg.job.seed * 1_000_003 + step)
        metrics = summarize(all_reduce_sum(trainer.forward_backward(batch, masked), world))
        if not math.isfinite(metrics["loss"]):
            stopped = "nan"
            trainer.optimizer.zero_grad(set_to_none=True)
            if world.is_main:
                path = save_checkpoint(cfg.job.output_dir / "checkpoints", step - 1,
                                       _checkpoint_state(trainer, step - 1, *before), keep=cfg.report.keep_checkpoints)
                log.error("step %d: the loss is %s; stopped. The last good state (step %d) is in %s. Lower the "
                          "learning rate or use bf16/fp32, then resume.", step, metrics["loss"], step - 1, path)
            step -= 1
            break
        grad_norm = trainer.apply_gradients()
        if replan is not None:
            replan.step_seconds.append(time.perf_counter() - step_started)
            if step in replan.at:
                replan.fit(cfg, trainer, step)
                bar.total = cfg.optim.steps
                replan = None if step == replan.at[-1] else replan
        step_losses[step] = metrics["loss"]
        report.window["tokens"] += int(batch.attention_mask.sum())
        # The wall-clock budget ends the run like its last step (evaluate, checkpoint, export).
        out_of_time = bool(all_reduce_sum(torch.tensor([time.monotonic() > deadline], dtype=torch.float64), world))
        last = step == cfg.optim.steps or out_of_time

        if world.is_main:
            report.after_step(step, metrics, grad_norm, stream.position, last=last)
        bar.update(1)
        if on_step is not None:
            on_step(step, metrics["loss"], model)
        if stop_after is not None and step >= stop_after and step < cfg.optim.steps:
            stopped = "stop_after"
            break
        if out_of_time and step < cfg.optim.steps:
            stopped = "time_limit"
            tqdm.write(f"wall-clock budget of {cfg.job.max_minutes:.1f} min used: stopped after step {step}")
            break
    bar.close()

    model_dir = None
    if world.is_main:
        if stopped != "stop_after":
            model_dir = export_model(model, cfg.job.output_dir / "model", tokenizer)
            logger.plot()
        logger.close()
    return PretrainResult(cfg.job.output_dir, step, step_losses, evaluations, stopped, model_dir)


def _checkpoint_state(trainer: Trainer, step: int, position: DataPosition, rng: dict) -> dict:
    """Everything a resumed run needs to repeat an uninterrupted one."""
    model = trainer.model
    return {"model": model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(), "scaler": trainer.scaler.state_dict(),
            "step": step, "position": dataclasses.asdict(position), "rng": rng,
            "config": trainer.cfg.options(), "model_config": model.config.to_dict(),
            "nsp": getattr(model, "nsp", None) is not None}


@dataclass
class _Report:
    """The main process's duties after a step: log, evaluate, checkpoint. `window` counts the tokens and
    training seconds since the last log line (evaluation and checkpoint time excluded from tokens/s)."""

    cfg: PretrainConfig
    trainer: Trainer
    logger: MetricsLogger
    bar: tqdm
    heldout: HeldOut
    evaluations: dict[int, dict]
    clock: float = field(default_factory=time.monotonic)
    window: dict = field(default_factory=lambda: {"tokens": 0, "time": time.perf_counter()})

    def after_step(self, step: int, metrics: dict, grad_norm: float, position: DataPosition, *, last: bool) -> None:
        cfg, window = self.cfg, self.window
        if step % cfg.report.log_every == 0 or last:
            rate = window["tokens"] / max(time.perf_counter() - window["time"], 1e-9)
            window.update(tokens=0, time=time.perf_counter())
            self.logger.log(step, {**metrics, "lr": self.trainer.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                                   "tokens_per_s": rate}, prefix="train")
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", mlm_acc=f"{metrics['mlm_accuracy']:.3f}",
                                 tok_s=f"{rate:,.0f}")
        if self.heldout and (step % cfg.report.eval_every == 0 or last):
            evaluated = time.perf_counter()
            self.evaluations[step] = evaluate(self.trainer.model, self.heldout, self.trainer.device,
                                              cfg.optim.precision)
            self.logger.log(step, {**self.evaluations[step], "minutes": (time.monotonic() - self.clock) / 60},
                            prefix="heldout")
            self.logger.plot()
            tqdm.write(f"step {step}: held-out {_fmt(self.evaluations[step])}")
            window["time"] += time.perf_counter() - evaluated
        if step % cfg.report.save_every == 0 or last:
            saving = time.perf_counter()
            save_checkpoint(cfg.job.output_dir / "checkpoints", step,
                            _checkpoint_state(self.trainer, step, position, rng_state()),
                            keep=cfg.report.keep_checkpoints)
            window["time"] += time.perf_counter() - saving


def _slice_masked(masked: MaskedBatch, rows: slice) -> MaskedBatch:
    return MaskedBatch(masked.input_ids[rows], masked.labels[rows], masked.masked_positions[rows])


def export_model(model: BertForPreTraining | BertLMHeadModel, directory: Path, tokenizer) -> Path:
    """A Hugging Face-format folder (config.json, model.safetensors, vocab) `transformers` can load
    (BertForPreTraining, BertForMaskedLM for MLM only, BertLMHeadModel with is_decoder for ltr)."""
    from bertforge.checkpoint import save_model

    return save_model(model, directory, tokenizer=tokenizer)


def _fmt(metrics: dict) -> str:
    text = f"MLM accuracy {metrics['mlm_accuracy']:.4f} (loss {metrics['mlm_loss']:.3f})"
    if metrics.get("mlm_mask_accuracy") is not None:
        text += f", at [MASK] {metrics['mlm_mask_accuracy']:.4f}"
    if metrics.get("nsp_accuracy") is not None:
        text += f", NSP accuracy {metrics['nsp_accuracy']:.4f}"
    return text


def run(corpus: CorpusSettings, job: RunSettings, model: ModelSettings = ModelSettings(),
        optim: OptimSettings = OptimSettings(), report: ReportSettings = ReportSettings()) -> Path:
    """Pre-train BERT with masked-LM (+ next-sentence prediction) on a corpus from `bertforge prepare`.

    Data-parallel: `torchrun --nproc_per_node=N -m bertforge pretrain ...` (gloo on CPU, NCCL on GPU).
    Options left unset take their value from the recipe (see RECIPES in training/pretrain_settings.py and
    docs/pretraining.md): `--recipe budget --max-minutes 60` is the one that learns most per CPU-minute, and
    `--pair-phase 0.4` adds the second phase on sentence pairs that sentence-pair tasks need
    (training/pretrain_phases.py).

    Args:
        corpus: The prepared data, the objective and the masking (pretrain_settings.CorpusSettings).
        job: The run folder, recipe, seed, time budget and hardware (RunSettings).
        model: The model's size and initial weights (ModelSettings).
        optim: The optimizer, its schedule and the precision (OptimSettings).
        report: Evaluation, logging and checkpoints (ReportSettings).
    """
    cfg = PretrainConfig(corpus, job, model, optim, report)  # checks every setting before any work
    if cfg.corpus.pair_phase:
        from bertforge.training.pretrain_phases import train_in_two_phases

        result = train_in_two_phases(corpus, job, model, optim, report)
    else:
        result = train(cfg)
    if result.stopped == "nan":
        raise SystemExit(f"stopped at step {result.step + 1}: non-finite loss (checkpoint of step {result.step} saved)")
    return result.output_dir
