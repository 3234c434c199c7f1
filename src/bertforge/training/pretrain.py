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
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
from bertforge.data.pretraining import DataPosition, ExampleSettings, ExampleStream, PreTrainingBatch, collate
from bertforge.data.shards import PreparedCorpus
from bertforge.files import write_text_atomic
from bertforge.heads import BertForPreTraining, BertLMHeadModel
from bertforge.training.checkpointing import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from bertforge.training.distributed import all_reduce_sum, init_distributed
from bertforge.training.lamb import Lamb
from bertforge.training.metrics import MetricsLogger
from bertforge.training.optim import ScheduleName, build_adamw, build_schedule, parameter_groups
from bertforge.training.run_folder import open_run

log = logging.getLogger(__name__)

Objective = Literal["mlm_nsp", "mlm", "ltr"]
Precision = Literal["fp32", "bf16", "fp16"]
EVAL_SEED = 20181011  # held-out masks are fixed, so evaluations are comparable across steps and runs


@dataclass
class PretrainConfig:
    """Every setting of a pre-training run (saved as config.json beside the checkpoints).
    The meaning of each field is documented on `run`, which takes the same names."""

    data: Path
    output_dir: Path
    preset: str = "mini"
    model_overrides: dict = field(default_factory=dict)
    init_from: Path | None = None
    objective: Objective = "mlm_nsp"
    max_seq_length: int = 128
    short_seq_prob: float = 0.1
    masking_rate: float = 0.15
    max_predictions: int = 20
    whole_word_masking: bool = False
    batch_size: int = 32
    grad_accum_steps: int = 1
    steps: int = 1000
    optimizer: Literal["adamw", "lamb"] = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: ScheduleName = "linear"
    max_grad_norm: float = 1.0
    precision: Precision = "fp32"
    compile: bool = False
    dropout: float | None = None
    seed: int = 0
    eval_every: int = 200
    eval_batches: int = 10
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = False
    overwrite: bool = False
    max_minutes: float | None = None
    threads: int | None = None
    device: str = "auto"
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.data, self.output_dir = Path(self.data), Path(self.output_dir)
        self.init_from = Path(self.init_from) if self.init_from is not None else None
        if self.objective not in ("mlm_nsp", "mlm", "ltr"):
            raise ValueError(f"objective must be 'mlm_nsp' (BERT), 'mlm' (no NSP, RoBERTa) or 'ltr' (left-to-right "
                             f"LM), not {self.objective!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, not {self.precision!r}")
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by "
                             f"grad_accum_steps {self.grad_accum_steps}")


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
    changes = {"vocab_size": vocab_size, "max_position_embeddings": max(512, cfg.max_seq_length),
               **cfg.model_overrides}
    if cfg.dropout is not None:
        changes.update(hidden_dropout=cfg.dropout, attention_dropout=cfg.dropout)
    config = BertConfig.from_preset(cfg.preset, **changes)
    if cfg.objective == "ltr":
        model = BertLMHeadModel(config)
    else:
        model = BertForPreTraining(config, nsp=cfg.objective == "mlm_nsp")
    if cfg.init_from is not None:
        _load_initial_weights(model, cfg.init_from)
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
    if cfg.optimizer == "lamb":
        return Lamb(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
    return build_adamw(model, lr=cfg.lr, weight_decay=cfg.weight_decay)


class BatchMasker:
    """Masks a batch with the run's settings and a generator seeded per (seed, step); for the ltr
    objective the targets are the next tokens instead (nothing is masked)."""

    def __init__(self, cfg: PretrainConfig, tokenizer) -> None:
        self.left_to_right = cfg.objective == "ltr"
        self.settings = MaskingSettings(rate=cfg.masking_rate, max_predictions=cfg.max_predictions,
                                        whole_word=cfg.whole_word_masking)
        self.mask_id = tokenizer.mask_id
        self.replacements = replacement_vocabulary(tokenizer.vocab_size, tokenizer.special_ids)
        self.continuation = continuation_table(tokenizer.vocab()) if cfg.whole_word_masking else None

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


def autocast(precision: Precision, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def losses(out, labels: torch.Tensor, nsp_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summed losses and correct counts of one (micro-)batch; labels are those at the masked positions
    (for the ltr objective the "mlm" statistics are those of next-token prediction)."""
    mlm_logits = (out.mlm_logits if hasattr(out, "mlm_logits") else out.logits).float()  # [N, V]
    stats = {"mlm_sum": F.cross_entropy(mlm_logits, labels, reduction="sum"),
             "mlm_correct": (mlm_logits.argmax(-1) == labels).sum(), "mlm_count": torch.tensor(labels.numel())}
    if getattr(out, "nsp_logits", None) is not None:
        nsp_logits = out.nsp_logits.float()  # [B, 2]
        stats.update(nsp_sum=F.cross_entropy(nsp_logits, nsp_labels, reduction="sum"),
                     nsp_correct=(nsp_logits.argmax(-1) == nsp_labels).sum(),
                     nsp_count=torch.tensor(nsp_labels.numel()))
    return stats


STAT_KEYS = ("mlm_sum", "mlm_correct", "mlm_count", "nsp_sum", "nsp_correct", "nsp_count")


def _stat_vector(stats: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.tensor([float(stats[k].detach()) if k in stats else 0.0 for k in STAT_KEYS], dtype=torch.float64)


def summarize(totals: torch.Tensor) -> dict[str, float | None]:
    """[6] summed statistics -> mean losses and accuracies."""
    t = dict(zip(STAT_KEYS, totals.tolist(), strict=True))
    mlm_loss = t["mlm_sum"] / max(t["mlm_count"], 1)
    out = {"mlm_loss": mlm_loss, "mlm_accuracy": t["mlm_correct"] / max(t["mlm_count"], 1)}
    if t["nsp_count"]:
        out.update(nsp_loss=t["nsp_sum"] / t["nsp_count"], nsp_accuracy=t["nsp_correct"] / t["nsp_count"])
    out["loss"] = mlm_loss + (out.get("nsp_loss") or 0.0)
    return out


@torch.no_grad()
def evaluate(model: BertForPreTraining | BertLMHeadModel, batches: list[tuple[PreTrainingBatch, MaskedBatch]],
             device: torch.device, precision: Precision = "fp32") -> dict[str, float | None]:
    """Held-out MLM loss/accuracy (at the masked positions) and NSP loss/accuracy."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
    for batch, masked in batches:
        with autocast(precision, device):
            out = model(masked.input_ids.to(device), batch.attention_mask.to(device), batch.token_type_ids.to(device),
                        masked_positions=masked.masked_positions.to(device))
        stats = losses(out, masked.labels[masked.masked_positions].to(device), batch.nsp_labels.to(device))
        totals += _stat_vector(stats)
    model.train(was_training)
    return summarize(totals)


def heldout_batches(corpus: PreparedCorpus, cfg: PretrainConfig, tokenizer, masker: BatchMasker
                    ) -> list[tuple[PreTrainingBatch, MaskedBatch]]:
    """A fixed evaluation set: the first examples of the held-out shards with fixed masks."""
    shards = list(corpus.shards("heldout"))
    if not shards or cfg.eval_batches <= 0:
        return []
    settings = ExampleSettings(cfg.max_seq_length, cfg.short_seq_prob, cfg.objective == "mlm_nsp")
    stream = ExampleStream(shards, settings, seed=EVAL_SEED)
    out = []
    for i in range(cfg.eval_batches):
        batch = collate(stream.take(cfg.batch_size), cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                        pad_id=tokenizer.pad_id)
        out.append((batch, masker(batch, EVAL_SEED + i)))
        if stream.position.epoch > 0:  # a small held-out split: do not repeat examples
            break
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----- the loop -----------------------------------------------------------------------------------
def train(cfg: PretrainConfig, *, on_step: Callable[[int, float, torch.nn.Module], None] | None = None,
          stop_after: int | None = None) -> PretrainResult:
    """Run (or resume) pre-training. `on_step(step, loss, model)` is called after every optimizer step;
    `stop_after` ends the run after that step without a final checkpoint (to simulate a crash)."""
    resumed_from = open_run(cfg)  # options, positions, the run folder's rules; the checkpoint to resume from
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg.device)
    world = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if cfg.batch_size % (world.size * cfg.grad_accum_steps):
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by processes ({world.size}) x "
                         f"grad_accum_steps ({cfg.grad_accum_steps})")
    corpus = PreparedCorpus.open(cfg.data)
    tokenizer = corpus.tokenizer()
    out_dir, ckpt_dir = cfg.output_dir, cfg.output_dir / "checkpoints"

    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_model(cfg, tokenizer.vocab_size).to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_schedule(optimizer, cfg.schedule, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    position, step = DataPosition(), 0
    if resumed_from is not None:
        state = load_checkpoint(resumed_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        position, step = DataPosition(**state["position"]), state["step"]
        set_rng_state(state["rng"])
    elif cfg.resume:
        log.info("no checkpoint in %s yet: starting from step 0", ckpt_dir)

    settings = ExampleSettings(cfg.max_seq_length, cfg.short_seq_prob, cfg.objective == "mlm_nsp")
    stream = ExampleStream(list(corpus.shards("train")), settings, seed=cfg.seed, position=position)
    masker = BatchMasker(cfg, tokenizer)
    eval_set = heldout_batches(corpus, cfg, tokenizer, masker) if world.is_main else []
    net: torch.nn.Module = model
    if world.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    ddp = net  # no_sync() lives on the DDP wrapper, not on a compiled module
    if cfg.compile:
        net = torch.compile(net)

    logger = None
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save(out_dir / "tokenizer")
        write_text_atomic(out_dir / "config.json", json.dumps(_jsonable(cfg), indent=2))
        logger = MetricsLogger(out_dir, tensorboard=cfg.tensorboard)
        logger.truncate_after(step) if resumed_from else logger.jsonl.unlink(missing_ok=True)
        print(f"model: {cfg.preset} {model.config.num_layers}L H={model.config.hidden_size}, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters; objective {cfg.objective}; "
              f"{world.size} process(es) on {device}" + (f"; resumed from {resumed_from}" if resumed_from else ""))

    def checkpoint_state(at_step: int, at_position: DataPosition, rng: dict) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": at_step, "position": dataclasses.asdict(at_position),
                "rng": rng, "config": _jsonable(cfg), "model_config": model.config.to_dict(),
                "nsp": getattr(model, "nsp", None) is not None}

    evaluations: dict[int, dict] = {}
    if step == 0 and eval_set:
        evaluations[0] = evaluate(model, eval_set, device, cfg.precision)
        logger.log(0, evaluations[0], prefix="heldout")
        print(f"untrained model, held-out: {_fmt(evaluations[0])}")

    local = cfg.batch_size // world.size
    micro = local // cfg.grad_accum_steps
    step_losses: dict[int, float] = {}
    stopped = "finished"
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", disable=not (world.is_main and cfg.progress),
               dynamic_ncols=True)
    model.train()
    window = {"tokens": 0, "time": time.perf_counter()}
    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    while step < cfg.steps:
        before = (dataclasses.replace(stream.position), rng_state())  # the state a NaN stop saves
        step += 1
        batch = collate(stream.take(cfg.batch_size), cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id,
                        pad_id=tokenizer.pad_id)
        masked = masker(batch, cfg.seed * 1_000_003 + step)
        total_masked = int(masked.masked_positions.sum())  # over the global batch
        rows = slice(world.rank * local, (world.rank + 1) * local)
        batch, masked = batch.slice(rows.start, rows.stop), _slice_masked(masked, rows)
        totals = torch.zeros(len(STAT_KEYS), dtype=torch.float64)
        for m in range(cfg.grad_accum_steps):
            part = slice(m * micro, (m + 1) * micro)
            positions = masked.masked_positions[part].to(device)
            with autocast(cfg.precision, device):
                out = net(masked.input_ids[part].to(device), batch.attention_mask[part].to(device),
                          batch.token_type_ids[part].to(device), masked_positions=positions)
            stats = losses(out, masked.labels[part].to(device)[positions], batch.nsp_labels[part].to(device))
            # Normalise by the global counts; DDP averages gradients over ranks, hence x world size.
            loss = stats["mlm_sum"] / total_masked
            if "nsp_sum" in stats:
                loss = loss + stats["nsp_sum"] / cfg.batch_size
            sync = ddp.no_sync() if world.distributed and m < cfg.grad_accum_steps - 1 else contextlib.nullcontext()
            with sync:
                scaler.scale(loss * world.size).backward()
            totals += _stat_vector(stats)
        metrics = summarize(all_reduce_sum(totals, world))
        if not math.isfinite(metrics["loss"]):
            stopped = "nan"
            optimizer.zero_grad(set_to_none=True)
            if world.is_main:
                path = save_checkpoint(ckpt_dir, step - 1, checkpoint_state(step - 1, *before),
                                       keep=cfg.keep_checkpoints)
                log.error("step %d: the loss is %s; stopped. The last good state (step %d) is in %s. Lower the "
                          "learning rate or use bf16/fp32, then resume.", step, metrics["loss"], step - 1, path)
            step -= 1
            break
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step_losses[step] = metrics["loss"]
        window["tokens"] += int(batch.attention_mask.sum()) * world.size
        # The wall-clock budget ends the run like its last step (evaluate, checkpoint, export).
        out_of_time = bool(all_reduce_sum(torch.tensor([time.monotonic() > deadline], dtype=torch.float64), world))
        last = step == cfg.steps or out_of_time

        if world.is_main:
            if step % cfg.log_every == 0 or last:
                elapsed = time.perf_counter() - window["time"]
                rate = window["tokens"] / max(elapsed, 1e-9)
                window.update(tokens=0, time=time.perf_counter())
                logger.log(step, {**metrics, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                                  "tokens_per_s": rate}, prefix="train")
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", mlm_acc=f"{metrics['mlm_accuracy']:.3f}",
                                nsp_acc=f"{metrics.get('nsp_accuracy') or 0:.3f}", tok_s=f"{rate:,.0f}")
            if eval_set and (step % cfg.eval_every == 0 or last):
                evaluations[step] = evaluate(model, eval_set, device, cfg.precision)
                logger.log(step, evaluations[step], prefix="heldout")
                logger.plot()
                tqdm.write(f"step {step}: held-out {_fmt(evaluations[step])}")
            if step % cfg.save_every == 0 or last:
                save_checkpoint(ckpt_dir, step, checkpoint_state(step, stream.position, rng_state()),
                                keep=cfg.keep_checkpoints)
        bar.update(1)
        if on_step is not None:
            on_step(step, metrics["loss"], model)
        if stop_after is not None and step >= stop_after and step < cfg.steps:
            stopped = "stop_after"
            break
        if out_of_time and step < cfg.steps:
            stopped = "time_limit"
            tqdm.write(f"wall-clock budget of {cfg.max_minutes} min used: stopped after step {step}")
            break
    bar.close()

    model_dir = None
    if world.is_main:
        if stopped != "stop_after":
            model_dir = export_model(model, out_dir / "model", tokenizer)
            logger.plot()
        logger.close()
    return PretrainResult(out_dir, step, step_losses, evaluations, stopped, model_dir)


def _slice_masked(masked: MaskedBatch, rows: slice) -> MaskedBatch:
    return MaskedBatch(masked.input_ids[rows], masked.labels[rows], masked.masked_positions[rows])


def export_model(model: BertForPreTraining | BertLMHeadModel, directory: Path, tokenizer) -> Path:
    """A Hugging Face-format folder (config.json, model.safetensors, vocab) `transformers` can load
    (BertForPreTraining, BertForMaskedLM for MLM only, BertLMHeadModel with is_decoder for ltr)."""
    from bertforge.checkpoint import save_model

    return save_model(model, directory, tokenizer=tokenizer)


def _fmt(metrics: dict) -> str:
    text = f"MLM accuracy {metrics['mlm_accuracy']:.4f} (loss {metrics['mlm_loss']:.3f})"
    if metrics.get("nsp_accuracy") is not None:
        text += f", NSP accuracy {metrics['nsp_accuracy']:.4f}"
    return text


def _jsonable(cfg: PretrainConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def run(data: Path, output_dir: Path, preset: str = "mini", model_overrides: dict | None = None,
        init_from: Path | None = None, objective: Objective = "mlm_nsp", max_seq_length: int = 128,
        short_seq_prob: float = 0.1, masking_rate: float = 0.15, max_predictions: int = 20,
        whole_word_masking: bool = False, batch_size: int = 32, grad_accum_steps: int = 1, steps: int = 1000,
        optimizer: Literal["adamw", "lamb"] = "adamw", lr: float = 5e-4, weight_decay: float = 0.01,
        warmup_steps: int = 100, schedule: ScheduleName = "linear", max_grad_norm: float = 1.0,
        precision: Precision = "fp32", compile: bool = False, dropout: float | None = None, seed: int = 0,
        eval_every: int = 200, eval_batches: int = 10, log_every: int = 10, save_every: int = 500,
        keep_checkpoints: int = 2, resume: bool = False, overwrite: bool = False, max_minutes: float | None = None,
        threads: int | None = None, device: str = "auto",
        progress: bool = True, tensorboard: bool = True) -> Path:
    """Pre-train BERT with masked-LM (+ next-sentence prediction) on a corpus from `bertforge prepare`.

    Data-parallel: `torchrun --nproc_per_node=N -m bertforge pretrain ...` (gloo on CPU, NCCL on GPU).

    Args:
        data: A folder written by `bertforge prepare` (shards + tokenizer).
        output_dir: Run folder: checkpoints/, model/ (Hugging Face format), metrics.jsonl, tensorboard/, curves.png.
        preset: Model size: tiny, mini, small, medium, base or large.
        model_overrides: BertConfig fields to change, e.g. {num_layers: 2, hidden_size: 96}.
        init_from: Start from these weights (a run folder, checkpoint file or Hugging Face folder), e.g. the
            second phase at length 512 after a first phase at 128 (BERT Appendix A.2).
        objective: mlm_nsp (BERT), mlm (masked-LM only, as RoBERTa and Cramming found better) or ltr (a
            left-to-right LM, causal attention, no NSP: the paper's "LTR & No NSP" ablation).
        max_seq_length: Tokens per example, [CLS] and [SEP]s included.
        short_seq_prob: Share of examples with a shorter random target length (BERT: 0.1).
        masking_rate: Share of tokens selected for prediction (BERT: 0.15).
        max_predictions: At most this many predictions per sequence (BERT: 20 at 128, 80 at 512).
        whole_word_masking: Select whole words (all their WordPiece pieces) instead of single pieces.
        batch_size: Examples per optimizer step, over all processes and accumulation steps.
        grad_accum_steps: Split each process's share of a batch into this many micro-batches.
        steps: Optimizer steps in total (the schedule's length).
        optimizer: adamw (BERT) or lamb (large batches, You et al. 2019).
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay (not on biases and LayerNorm weights).
        warmup_steps: Linear warm-up steps.
        schedule: linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup.
        max_grad_norm: Clip the global gradient norm to this.
        precision: fp32, bf16 (autocast) or fp16 (autocast + loss scaling).
        compile: Compile the model with torch.compile.
        dropout: Override the preset's dropout (hidden and attention), e.g. 0 for short runs.
        seed: Seeds the weights, the example pairing and the masks.
        eval_every: Evaluate on the held-out shards every n steps.
        eval_batches: Held-out batches per evaluation.
        log_every: Log training metrics every n steps.
        save_every: Write a checkpoint every n steps (and at the end).
        keep_checkpoints: Keep the newest n checkpoints.
        resume: Continue from output_dir/checkpoints/latest if it exists (exactly where it stopped; a truncated
            latest checkpoint is skipped for the newest intact one).
        overwrite: Delete the earlier run in output_dir first (a folder that is not empty needs --resume or this).
        max_minutes: Wall-clock budget: stop after the step that exceeds it (evaluate, checkpoint, export).
        threads: CPU threads for torch (default: torch's choice).
        device: auto, cpu, cuda or cuda:N.
        progress: Show the progress bar.
        tensorboard: Write TensorBoard event files.
    """
    values = dict(locals())
    values["model_overrides"] = values["model_overrides"] or {}
    result = train(PretrainConfig(**values))
    if result.stopped == "nan":
        raise SystemExit(f"stopped at step {result.step + 1}: non-finite loss (checkpoint of step {result.step} saved)")
    return result.output_dir
