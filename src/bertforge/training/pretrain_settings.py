"""`bertforge pretrain`'s settings: five typed groups (model, corpus, optimisation, reporting, the run), each
documenting its own fields, and `PretrainConfig`, which holds one of each and fills the fields left unset from
the recipe.

The command line and a `--config` YAML name every field flat (`--learning-rate`, not `--optim.learning-rate`):
`cli.call_job` gathers them into the groups of `pretrain.run`'s signature. A run folder saves them flat too
(config.json and each checkpoint's "config", `PretrainConfig.options()`), under the same names as before the
settings were grouped, so an earlier run resumes and a saved config.json is also a `--config` file.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from bertforge.config import BertConfig
from bertforge.data.pretraining import ExampleSettings
from bertforge.errors import OptionError
from bertforge.options import check_options
from bertforge.precision import TrainingPrecision, check_precision, resolve_precision
from bertforge.training.optim import ScheduleName

Objective = Literal["mlm_nsp", "mlm", "ltr"]
Recipe = Literal["bert", "budget"]


def budget_learning_rate(hidden_size: int) -> float:
    """The budget recipe's peak learning rate for a model of this width: post-LayerNorm BERT stalls on the
    unigram plateau when it is too high, and the bound falls with the width. 1e-3 learns up to H=256 (tiny, mini;
    2e-3 stalled mini), 5e-4 at H=512 (small, where 1e-3 stalled for all of 10 minutes): 10-minute runs on
    Wikipedia, docs/results/pretraining_budget.md. Wider models take 5e-4 too, unmeasured."""
    return 1e-3 if hidden_size <= 256 else 5e-4


_BY_WIDTH = "by width"  # the budget recipe's learning rate: budget_learning_rate of the model's width

# Named recipes: the settings a field left at None takes. "bert" is the paper's (Appendix A.2; NSP pairs,
# 15% masking, dropout 0.1); "budget" is what learns most per CPU-minute on a small budget, each choice
# measured side by side in docs/results/pretraining_budget.md: MLM only on packed rows (no padding, no
# NSP), 30% masking, no dropout, bf16 where the processor has it, a higher peak, a schedule planned to
# end at the wall-clock budget, and a start that skips most of the unigram plateau (sinusoidal positions,
# local heads in layer 0: training/initialization.py).
RECIPES: dict[str, dict] = {
    "bert": {"objective": "mlm_nsp", "packing": False, "masking_rate": 0.15, "dropout": None, "learning_rate": 5e-4,
             "warmup_steps": 100, "warmup_ratio": None, "precision": "fp32", "batch_size": 32,
             "position_init": "normal", "adam_beta2": 0.999, "attention_init": "random"},
    "budget": {"objective": "mlm", "packing": True, "masking_rate": 0.3, "dropout": 0.0, "learning_rate": _BY_WIDTH,
               "warmup_steps": None, "warmup_ratio": 0.06, "precision": "auto", "batch_size": 32,
               "position_init": "sinusoidal", "adam_beta2": 0.999, "attention_init": "local"},
}


def _set_path(settings: object, name: str) -> None:
    """A frozen group's path field as a Path (the command line and JSON give strings)."""
    value = getattr(settings, name)
    if value is not None and not isinstance(value, Path):
        object.__setattr__(settings, name, Path(value))


@dataclass(frozen=True)
class ModelSettings:
    """Model and initialisation.

    Args:
        preset: Model size: tiny, mini, small, medium, base or large.
        model_overrides: BertConfig fields to change, e.g. {num_layers: 2, hidden_size: 96}.
        init_from: Start from these weights (a run folder, checkpoint file or Hugging Face folder), e.g. the
            second phase at length 512 after a first phase at 128 (BERT Appendix A.2).
        dropout: Override the preset's dropout (hidden and attention), e.g. 0 for short runs.
        position_init: normal (BERT's N(0, 0.02)) or sinusoidal (the learned table starts from sinusoids
            scaled to the token embeddings; same layout, positions usable from step 0).
        attention_init: random (BERT) or local: two heads of the first layer start looking at the previous
            and the next token (needs position_init sinusoidal; same layout). See training/initialization.py.
    """

    preset: str = "mini"
    model_overrides: dict = field(default_factory=dict)
    init_from: Path | None = None
    dropout: float | None = None
    position_init: Literal["normal", "sinusoidal"] | None = None
    attention_init: Literal["random", "local"] | None = None

    def __post_init__(self) -> None:
        _set_path(self, "init_from")
        if self.attention_init == "local" and self.position_init not in (None, "sinusoidal"):  # None: the recipe's
            raise OptionError("--attention-init local builds its heads from the sinusoidal position table: "
                              "add --position-init sinusoidal")


@dataclass(frozen=True)
class CorpusSettings:
    """Data, objective and masking.

    Args:
        data: A folder written by `bertforge prepare` (shards + tokenizer).
        objective: mlm_nsp (BERT), mlm (masked-LM only, as RoBERTa and Cramming found better) or ltr (a
            left-to-right LM, causal attention, no NSP: the paper's "LTR & No NSP" ablation).
        packing: mlm only: fill every row to max_length with windows of documents (several short ones
            share a row, attention stays inside each window), so no compute goes to padding.
        max_length: Tokens per example, [CLS] and [SEP]s included.
        short_seq_prob: Share of unpacked examples with a shorter random target length (BERT: 0.1).
        masking_rate: Share of tokens selected for prediction (BERT: 0.15). Held-out accuracy is always
            measured at 15%, so runs with other rates compare.
        max_predictions: At most this many predictions per sequence (default: masking_rate x max_length,
            rounded up: BERT's 20 at 128).
        whole_word_masking: Select whole words (all their WordPiece pieces) instead of single pieces.
        pair_phase: Share of the run (of max_minutes, or of steps) given to a second phase after an mlm
            one: sentence pairs with NSP, unpacked, from the first phase's model at half its peak learning
            rate. Packed MLM learns words fastest; sentence-pair tasks need a model that has also read pairs
            ([CLS] and the segments): one hour split 36 + 24 minutes gained +60 STS-B Spearman over the
            untrained model, MLM alone +5.6 (docs/results/pretraining_budget.md). The first phase runs in
            output_dir/phase1, the second in output_dir. 0: one phase.
    """

    data: Path
    objective: Objective | None = None
    packing: bool | None = None
    max_length: int = 128
    short_seq_prob: float = 0.1
    masking_rate: float | None = None
    max_predictions: int | None = None
    whole_word_masking: bool = False
    pair_phase: float = 0.0

    def __post_init__(self) -> None:
        _set_path(self, "data")
        check_options({"pair_phase": self.pair_phase})
        if self.objective not in (None, *typing.get_args(Objective)):
            raise OptionError(f"objective must be 'mlm_nsp' (BERT), 'mlm' (no NSP, RoBERTa) or 'ltr' (left-to-right "
                              f"LM), not {self.objective!r}")
        if self.packing and self.objective not in (None, "mlm"):
            raise OptionError(f"--packing with --objective {self.objective}: packed rows hold windows of several "
                              "documents, which only the mlm objective can use; use --objective mlm or --packing false")
        if self.masking_rate is not None and not 0 < self.masking_rate < 1:
            raise OptionError(f"--masking-rate {self.masking_rate}: must be between 0 and 1 (BERT: 0.15)")

    def example_settings(self) -> ExampleSettings:
        return ExampleSettings(self.max_length, self.short_seq_prob, self.objective == "mlm_nsp",
                               packed=bool(self.packing))


@dataclass(frozen=True)
class OptimSettings:
    """Optimisation, schedule and precision.

    Args:
        batch_size: Examples per optimizer step, over all processes and accumulation steps.
        grad_accum_steps: Split each process's share of a batch into this many micro-batches.
        steps: Optimizer steps in total (the schedule's length). Unset with max_minutes: planned from the
            measured speed so the schedule ends at the budget, and fitted again 5% and 20% into the run from its
            own steps; unset without: 1000.
        optimizer: adamw (BERT) or lamb (large batches, You et al. 2019).
        learning_rate: Peak learning rate. The budget recipe takes it by width: 1e-3 up to hidden size 256
            (tiny, mini), 5e-4 wider (at 512, small, 1e-3 leaves the model on the unigram plateau where 5e-4
            learns: 10-minute runs, docs/results/pretraining_budget.md; wider models unmeasured).
        adam_beta2: Adam's second-moment decay: 0.999 (BERT) or 0.98 (RoBERTa, the budget papers): in a
            short run the squared gradients of the first steps, far larger than later ones, then fade in
            ~50 steps instead of ~1,000, so they stop shrinking the updates.
        weight_decay: Decoupled weight decay (not on biases and LayerNorm weights).
        warmup_steps: Linear warm-up steps.
        warmup_ratio: Linear warm-up as a share of the steps (instead of warmup_steps).
        schedule: linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup.
        max_grad_norm: Clip the global gradient norm to this.
        precision: fp32, bf16 (autocast), fp16 (autocast + loss scaling) or auto (bf16 where the hardware
            computes it natively, else fp32). Saved weights are fp32 either way.
        compile: Compile the model with torch.compile.
    """

    batch_size: int | None = None
    grad_accum_steps: int = 1
    steps: int | None = None
    optimizer: Literal["adamw", "lamb"] = "adamw"
    learning_rate: float | None = None
    adam_beta2: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    warmup_ratio: float | None = None
    schedule: ScheduleName = "linear"
    max_grad_norm: float = 1.0
    precision: TrainingPrecision | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None:
            check_precision(self.precision, training=True)
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise OptionError(f"--warmup-ratio {self.warmup_ratio}: must be at least 0 and below 1 (e.g. 0.06)")
        if self.batch_size is not None and self.batch_size % self.grad_accum_steps:
            raise OptionError(f"batch_size {self.batch_size} is not divisible by "
                              f"grad_accum_steps {self.grad_accum_steps}")


@dataclass(frozen=True)
class ReportSettings:
    """Evaluation, logging and checkpoints.

    Args:
        eval_every: Evaluate on the held-out shards every n steps (default: 10 evaluations per run).
        eval_batches: Held-out batches (of 32 rows) per evaluation.
        log_every: Log training metrics every n steps.
        save_every: Write a checkpoint every n steps and at the end (default: 4 per run).
        keep_checkpoints: Keep the newest n checkpoints.
        tensorboard: Write TensorBoard event files.
    """

    eval_every: int | None = None
    eval_batches: int = 10
    log_every: int = 10
    save_every: int | None = None
    keep_checkpoints: int = 2
    tensorboard: bool = True


@dataclass(frozen=True)
class RunSettings:
    """The run.

    Args:
        output_dir: Run folder: checkpoints/, model/ (Hugging Face format), metrics.jsonl, tensorboard/, curves.png.
        recipe: Defaults for the options left unset: bert (the paper: MLM + NSP pairs, 15% masking, dropout 0.1,
            lr 5e-4, 100 warm-up steps, fp32) or budget (MLM only on packed rows, 30% masking, no dropout,
            lr 1e-3 up to hidden size 256 and 5e-4 wider, 6% warm-up, bf16 where the processor has it,
            sinusoidal positions and local heads).
        seed: Seeds the weights, the example pairing and the masks.
        resume: Continue from output_dir/checkpoints/latest if it exists (exactly where it stopped; a truncated
            latest checkpoint is skipped for the newest intact one).
        overwrite: Delete the earlier run in output_dir first (a folder that is not empty needs --resume or this).
        max_minutes: Wall-clock budget: stop after the step that exceeds it (evaluate, checkpoint, export).
        threads: CPU threads for torch (default: torch's choice).
        device: auto (a GPU if there is one), cpu, cuda, cuda:N or mps.
        progress: Show the progress bar.
    """

    output_dir: Path
    recipe: Recipe = "bert"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    max_minutes: float | None = None
    threads: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        _set_path(self, "output_dir")
        if self.recipe not in RECIPES:
            raise OptionError(f"--recipe {self.recipe}: choose one of {', '.join(RECIPES)}")


@dataclass
class PretrainConfig:
    """Every pre-training setting, one group each (the classes above document the fields). Fields left at
    None take the value of the recipe (RECIPES) or, for max_predictions, one derived from the others;
    `plan` fixes the step count and what follows from it. Build one from flat option names with
    `from_options`; `options()` gives them back flat, as the run folder saves them."""

    corpus: CorpusSettings
    job: RunSettings
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    report: ReportSettings = field(default_factory=ReportSettings)

    def __post_init__(self) -> None:
        recipe = dict(RECIPES[self.job.recipe])
        if self.optim.warmup_steps is not None or self.optim.warmup_ratio is not None:
            recipe = {name: value for name, value in recipe.items() if not name.startswith("warmup")}
        # replace() builds each group again, so its own checks see the recipe's values too.
        self.model, self.corpus, self.optim = (_fill(group, recipe) for group in (self.model, self.corpus, self.optim))
        if self.optim.learning_rate == _BY_WIDTH:
            width = BertConfig.from_preset(self.model.preset, **self.model.model_overrides).hidden_size
            self.optim = dataclasses.replace(self.optim, learning_rate=budget_learning_rate(width))
        if self.corpus.pair_phase and self.corpus.objective != "mlm":
            raise OptionError(f"--pair-phase follows a masked-LM phase, and this run's objective is "
                              f"{self.corpus.objective}: add --objective mlm, or use --recipe budget (which sets it)")
        if self.corpus.max_predictions is None:
            self.corpus = dataclasses.replace(
                self.corpus, max_predictions=math.ceil(self.corpus.masking_rate * self.corpus.max_length))

    @classmethod
    def from_options(cls, **options) -> PretrainConfig:
        """Settings named as on the command line (data=..., output_dir=..., learning_rate=...), each into its group."""
        groups = {}
        for name, group in typing.get_type_hints(cls).items():
            names = {f.name for f in dataclasses.fields(group)}
            groups[name] = group(**{key: options.pop(key) for key in names & set(options)})
        if options:
            raise TypeError(f"not a pre-training setting: {', '.join(sorted(options))}")
        return cls(**groups)

    def options(self) -> dict:
        """Every setting under its command-line name, paths as text: what config.json and the checkpoints keep."""
        flat = {}
        for group in dataclasses.fields(self):
            flat.update(dataclasses.asdict(getattr(self, group.name)))
        return {name: str(value) if isinstance(value, Path) else value for name, value in flat.items()}

    def plan(self, steps: int) -> None:
        """Fix the step count and what follows from it (warm-up, evaluation and checkpoint intervals)."""
        ratio, report = self.optim.warmup_ratio, self.report
        warmup_steps = round(ratio * steps) if ratio is not None else self.optim.warmup_steps
        self.optim = dataclasses.replace(self.optim, steps=steps, warmup_steps=warmup_steps)
        self.report = dataclasses.replace(report, eval_every=report.eval_every or max(1, steps // 10),
                                          save_every=report.save_every or max(1, steps // 4))

    def use_device(self, device: torch.device) -> None:
        """Resolve `auto` precision for the device the run is on (and refuse one it cannot run)."""
        self.optim = dataclasses.replace(self.optim,
                                         precision=resolve_precision(self.optim.precision, device, training=True))


def _fill(group, recipe: dict):
    """`group` with its fields left at None set to the recipe's values."""
    unset = {f.name: recipe[f.name] for f in dataclasses.fields(group)
             if f.name in recipe and getattr(group, f.name) is None}
    return dataclasses.replace(group, **unset) if unset else group
