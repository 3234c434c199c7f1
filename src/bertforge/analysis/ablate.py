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

The job is composed from the others: the corpus is cut by data/excerpt.py, each variant is pre-trained by
`pretrain.train` and fine-tuned with the finetune job's task family, features and loop; the two extra
fine-tuning models live in ablation_models.py, the table and the plot in ablation_report.py.

The run folder is resumable: a finished pre-training or fine-tuning is skipped when its settings match,
an interrupted pre-training continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bertforge.analysis.ablation_models import BiLSTMOnTop, LeftToRight
from bertforge.analysis.ablation_report import TASK_COLUMNS, score, write_report
from bertforge.config import PRESETS
from bertforge.errors import OptionError
from bertforge.files import write_text_atomic

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

# ----- settings -----------------------------------------------------------------------------------
SQUAD_MAX_LENGTH = 256  # SQuAD windows while fine-tuning: long enough for a question and a paragraph's worth
SQUAD_STRIDE = 128
FIRST_SEED = 42  # fine-tuning seed whose results are named <task>.json; other seeds add -seed<N>


@dataclass(frozen=True)
class Selection:
    """What to compare.

    Args:
        groups: Which groups of variants: objectives (Table 5), positions, sizes (Table 6). Default: all.
        variants: Or name the variants (e.g. bert no_nsp ltr ltr_bilstm pos_rope size_mini).
        tasks: Downstream tasks among sst2, stsb, mrpc, squad, ner (default: all five). STS-B and NER
            (CoNLL-2003) are not in the paper's Table 5: NER is here because token-level transfer shows at
            budgets where the sentence-level tasks still sit at their floor, STS-B because it is the
            sentence-pair task that shows first whether NSP was learned.
    """

    groups: list[str] | None = None
    variants: list[str] | None = None
    tasks: list[str] | None = None

    def __post_init__(self) -> None:
        choose_variants(self.groups, self.variants)  # an unknown name fails here, before any work
        _check_known("--tasks", "task", self.chosen_tasks, TASK_COLUMNS)

    @property
    def chosen_tasks(self) -> list[str]:
        return list(self.tasks or TASK_COLUMNS)


@dataclass(frozen=True)
class AblationCorpus:
    """Data.

    The corpus every variant is pre-trained on and the downstream tasks' data (named apart from pretrain's
    CorpusSettings, which is a prepared corpus with its objective and masking).

    Args:
        files: Text files or folders (default: the shared Wikipedia dump).
        max_documents: Documents of the corpus used (every 50th held out for evaluation).
        vocab_size: WordPiece vocabulary trained on those documents.
        data_root: Folder holding glue/SST-2, glue/STS-B, glue/MRPC, conll2003/ and squad/ (the shared data).
    """

    files: list[Path] | None = None
    max_documents: int = 2000
    vocab_size: int = 8000
    data_root: Path = DATA

    def sources(self) -> list[Path]:
        return [Path(f) for f in self.files] if self.files else [Path(self.data_root) / "wikipedia"]


@dataclass(frozen=True)
class PretrainSettings:
    """Pre-training, the same for every variant.

    Args:
        budget: Pre-training tokens per variant (padding included), e.g. 2M, 500k; steps = budget / (batch x length).
        max_length: Pre-training sequence length.
        batch_size: Pre-training batch size.
        learning_rate: Peak pre-training learning rate (AdamW, 10% warm-up, linear decay).
        preset: Model size of every variant outside the sizes group (default tiny, as in the first tables;
            mini at a budget where pre-training transfers).
        seed: Seed of every pre-training (weights, pairs, masks).
        recipe: bert (the paper's start: random attention, learned positions from N(0, 0.02), fp32) or budget
            (`bertforge pretrain --recipe budget`'s start and precision: sinusoidal positions, local heads in
            layer 0, 30% masking, bf16 where native), which leaves the unigram plateau within a few hundred
            steps. Either way every variant has unpacked rows, dropout 0, and the objective it names.
    """

    budget: str = "2M"
    max_length: int = 128
    batch_size: int = 32
    learning_rate: float = 1e-3
    preset: str = "tiny"
    seed: int = 0
    recipe: str = "bert"

    def __post_init__(self) -> None:
        parse_tokens(self.budget)
        _check_known("--recipe", "recipe", [self.recipe], ("bert", "budget"))
        _check_known("--preset", "preset", [self.preset], PRESETS)

    @property
    def steps(self) -> int:
        return max(1, parse_tokens(self.budget) // (self.batch_size * self.max_length))

    def record(self) -> dict:
        """What a finished pre-training is recognised by in its summary.json (these names, not the options',
        so that run folders written before the options were renamed stay valid)."""
        record = {"budget_tokens": parse_tokens(self.budget), "max_seq_length": self.max_length,
                  "batch_size": self.batch_size, "lr": self.learning_rate, "seed": self.seed}
        return record if self.recipe == "bert" else {**record, "recipe": self.recipe}  # earlier folders: bert


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning, the same recipe for every variant and task.

    Args:
        finetune_epochs: Fine-tuning epochs (the best epoch on dev is reported).
        finetune_batch_size: Fine-tuning batch size.
        finetune_learning_rate: Peak fine-tuning learning rate.
        sst2_examples: First N SST-2 training sentences.
        ner_sentences: First N CoNLL-2003 training sentences (evaluated on the validation set).
        squad_train_questions: First N questions of the 35 training articles of the agreed SQuAD split.
        squad_eval_questions: First N questions of the 13 evaluation articles.
        finetune_seeds: Fine-tune every variant once per seed (default: 42 alone); with several, the table shows
            mean ± standard deviation, the noise any difference between rows must beat.
    """

    finetune_epochs: float = 3.0
    finetune_batch_size: int = 32
    finetune_learning_rate: float = 1e-4
    sst2_examples: int = 8000
    ner_sentences: int = 4000
    squad_train_questions: int = 2000
    squad_eval_questions: int = 1000
    finetune_seeds: list[int] | None = None

    @property
    def seeds(self) -> list[int]:
        return list(self.finetune_seeds or [FIRST_SEED])

    def record(self, seed: int) -> dict:
        """What one fine-tuning's cached result is recognised by (as PretrainSettings.record, the names of
        earlier run folders)."""
        return {"epochs": self.finetune_epochs, "batch_size": self.finetune_batch_size,
                "learning_rate": self.finetune_learning_rate, "seed": seed, "sst2_examples": self.sst2_examples,
                "squad_train_questions": self.squad_train_questions,
                "squad_eval_questions": self.squad_eval_questions, "squad_max_seq_length": SQUAD_MAX_LENGTH,
                "squad_doc_stride": SQUAD_STRIDE, **({"ner_sentences": self.ner_sentences} if self.ner_sentences != 4000
                                                     else {})}


def parse_tokens(budget: str | int) -> int:
    """'4M' -> 4_000_000, '500k' -> 500_000, '2e6' -> 2_000_000."""
    text = str(budget).strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}.get(text[-1:], 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise OptionError(f"--budget {budget!r} is not a token count; write e.g. 4M, 500k or 2000000") from None
    if not math.isfinite(value) or value < 1:
        raise OptionError(f"--budget {budget!r}: give at least 1 token, e.g. 2M")
    return int(value)


def _check_known(option: str, what: str, names: Sequence[str], known: Iterable[str]) -> None:
    known = list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise OptionError(f"{option}: unknown {what}(s) {', '.join(map(str, unknown))}; choose from {', '.join(known)}")


# ----- the corpus ---------------------------------------------------------------------------------
def prepare(corpus: Sequence[Path], output_dir: Path, *, max_documents: int, vocab_size: int):
    """The run folder's corpus (data/excerpt.py), prepared once: every variant must see the same one."""
    from bertforge.data.excerpt import prepare_excerpt
    from bertforge.data.shards import PreparedCorpus

    wanted = {"corpus": [str(c) for c in corpus], "max_documents": max_documents, "vocab_size": vocab_size}
    settings_file = output_dir / "corpus.json"
    if (output_dir / "data" / "meta.json").is_file():
        if settings_file.is_file():
            held = json.loads(settings_file.read_text(encoding="utf-8"))
            if held != wanted:
                raise OptionError(f"{settings_file}: this run folder's corpus was prepared with {held}, not {wanted}; "
                                 "every variant must see the same corpus, so pass a new --output-dir (or the old "
                                 "settings)")
        return PreparedCorpus.open(output_dir / "data")
    prepared = prepare_excerpt(corpus, output_dir, max_documents=max_documents, vocab_size=vocab_size)
    write_text_atomic(settings_file, json.dumps(wanted, indent=2) + "\n")
    return prepared


# ----- one variant --------------------------------------------------------------------------------
def pretrain(variant: Variant, data_dir: Path, run_dir: Path, settings: PretrainSettings, threads: int | None) -> dict:
    """Pre-train (or resume, or skip when done) one variant; returns its held-out metrics and cost."""
    from bertforge.training.pretrain import PretrainConfig, train

    summary_file = run_dir / "summary.json"
    wanted = {"objective": variant.objective, "position": variant.position, "preset": variant.preset,
              **settings.record()}
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if summary.get("settings") == wanted:
            return summary
    steps = settings.steps if variant.pretrained else 0
    cfg = PretrainConfig.from_options(
        data=data_dir, output_dir=run_dir, preset=variant.preset, objective=variant.objective, packing=False,
        recipe=settings.recipe, **_recipe_start(settings.recipe, variant),
        model_overrides={"position_embedding_type": variant.position}, max_length=settings.max_length,
        batch_size=settings.batch_size, steps=steps, learning_rate=settings.learning_rate,
        warmup_steps=max(1, steps // 10),
        dropout=0.0, seed=settings.seed, eval_every=max(1, steps // 4), eval_batches=20, log_every=max(1, steps // 50),
        save_every=max(1, steps // 4), resume=True, threads=threads, progress=False, tensorboard=False,
    )
    started = time.perf_counter()
    if not variant.pretrained:
        return _untrained(cfg, data_dir, run_dir, wanted, summary_file)
    result = train(cfg)
    final = result.evaluations[max(result.evaluations)]
    summary = {"settings": wanted, "steps": result.step, "tokens": result.step * settings.batch_size *
               settings.max_length, "seconds": round(time.perf_counter() - started, 1),
               "heldout": final, "model_dir": str(result.model_dir)}
    write_text_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    return summary


def _recipe_start(recipe: str, variant: Variant) -> dict:
    """The budget recipe's start builds its local heads from a sinusoidal learned position table, so it
    applies to the variants with learned positions; the others keep BERT's random start."""
    if recipe == "budget" and variant.position != "learned":
        return {"position_init": "normal", "attention_init": "random"}
    return {}


def _untrained(cfg, data_dir: Path, run_dir: Path, wanted: dict, summary_file: Path) -> dict:
    """The model exactly as pre-training would start it (same preset, vocabulary and seed), saved untrained."""
    from bertforge.data.shards import PreparedCorpus
    from bertforge.training.pretrain import build_model, export_model

    tokenizer = PreparedCorpus.open(data_dir).tokenizer()
    torch.manual_seed(cfg.job.seed)
    model_dir = export_model(build_model(cfg, tokenizer.vocab_size), run_dir / "model", tokenizer)
    summary = {"settings": wanted, "steps": 0, "tokens": 0, "seconds": 0.0, "heldout": {}, "model_dir": str(model_dir)}
    write_text_atomic(summary_file, json.dumps(summary, indent=2) + "\n")
    return summary


def task_data(task_name: str, data_root: Path, settings: FinetuneSettings, titles_dir: Path) -> tuple:
    """(DataSettings, training file, validation file) of the finetune job for one ablation task: SST-2, STS-B and
    MRPC train/dev, CoNLL-2003 train/valid, SQuAD v1.1 on the agreed split, whose two title lists are written to
    `titles_dir` (the same files `bertforge finetune --titles ... --eval-titles ...` takes, as in
    configs/finetune_squad.yaml)."""
    from bertforge.training.finetune import DataSettings

    if task_name in ("sst2", "stsb", "mrpc"):
        folder = data_root / "glue" / {"sst2": "SST-2", "stsb": "STS-B", "mrpc": "MRPC"}[task_name]
        limit = settings.sst2_examples if task_name == "sst2" else None
        return DataSettings(max_train_examples=limit), folder / "train.tsv", folder / "dev.tsv"
    if task_name == "ner":
        folder = data_root / "conll2003"
        return DataSettings(max_train_examples=settings.ner_sentences), folder / "train.txt", folder / "valid.txt"
    if task_name == "squad":
        from bertforge.tasks.qa import AGREED_EVAL_TITLES, read_squad

        path = data_root / "squad" / "dev-v1.1.reconstructed.json"
        every_title = dict.fromkeys(e.title for e in read_squad(path))  # file order, once each
        titles = {"train": [t for t in every_title if t not in AGREED_EVAL_TITLES],
                  "eval": [t for t in every_title if t in AGREED_EVAL_TITLES]}
        files = {split: titles_dir / f"squad_{split}_titles.txt" for split in titles}
        for split, names in titles.items():
            write_text_atomic(files[split], "".join(f"{name}\n" for name in names))
        return (DataSettings(titles=files["train"], eval_titles=files["eval"],
                             max_train_examples=settings.squad_train_questions,
                             max_eval_examples=settings.squad_eval_questions), path, path)
    raise OptionError(f"--tasks: unknown ablation task {task_name!r}; choose from {', '.join(TASK_COLUMNS)}")


def finetune(variant: Variant, model_dir: Path, task_name: str, data_root: Path, settings: FinetuneSettings,
             seed: int, result_file: Path) -> dict:
    """Fine-tune one pre-trained variant on one task with the finetune job's own pieces (its task family,
    features and training loop) and one seed; returns the best epoch's evaluation (cached). Nothing is saved
    but the scores."""
    from bertforge.checkpoint import load_model
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.finetune import InputSettings, read_features, task_family, with_dropout
    from bertforge.training.finetune_loop import TrainSettings, seed_everything, train

    wanted = {"variant": dataclasses.asdict(variant), **settings.record(seed)}
    if result_file.is_file():
        cached = json.loads(result_file.read_text(encoding="utf-8"))
        if _same_settings(cached.get("settings"), wanted):
            return cached
    data, train_path, eval_path = task_data(task_name, data_root, settings, result_file.parent)
    inputs = InputSettings(max_length=SQUAD_MAX_LENGTH if task_name == "squad" else 128, stride=SQUAD_STRIDE)
    # Dropout 0, as every variant was pre-trained: a short run on little data gains nothing from it.
    training = TrainSettings(epochs=settings.finetune_epochs, batch_size=settings.finetune_batch_size,
                             learning_rate=settings.finetune_learning_rate, dropout=0.0, seed=seed)
    task = task_family(task_name, data, inputs)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    train_features, eval_sets = read_features(task, tokenizer, data, inputs.max_length, train_path, [eval_path])

    seed_everything(training.seed)  # the new head's initial weights depend on the seed too
    net = with_dropout(load_model(model_dir, task.model_class, **task.model_kwargs()), training.dropout)
    if variant.bilstm:
        net.bert = BiLSTMOnTop(net.bert)
    if variant.objective == "ltr":
        net = LeftToRight(net)
    started = time.perf_counter()
    result = train(net, task, train_features, eval_sets, pad_id=tokenizer.pad_id, settings=training, progress=False)
    best, prefix = result.history[result.best_epoch - 1], f"{eval_sets[0].name}/"
    record = {"settings": wanted, "task": task_name, "train_features": len(train_features),
              "eval_examples": len(eval_sets[0].examples), "best_epoch": result.best_epoch,
              "seconds": round(time.perf_counter() - started, 1),
              "metrics": {k.removeprefix(prefix): v for k, v in best.items() if k.startswith(prefix)}}
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


# ----- the job ------------------------------------------------------------------------------------
def choose_variants(groups: list[str] | None, names: list[str] | None) -> list[Variant]:
    everything = {v.name: v for group in VARIANTS.values() for v in group}
    if names:
        _check_known("--variants", "variant", names, everything)
        chosen = [everything[n] for n in names]
    else:
        groups = groups or list(VARIANTS)
        _check_known("--groups", "group", groups, VARIANTS)
        chosen = [v for g in groups for v in VARIANTS[g]]
    # Every table needs its reference row: BERT (MLM + NSP, learned positions, tiny).
    if "bert" not in [v.name for v in chosen]:
        chosen.insert(0, everything["bert"])
    # A reused pre-training needs its owner to be run first.
    for v in list(chosen):
        if v.pretrain_as and v.pretrain_as not in [c.name for c in chosen]:
            chosen.insert(chosen.index(v), everything[v.pretrain_as])
    return chosen


def run(output_dir: Path = Path("runs/ablate"), select: Selection = Selection(),
        corpus: AblationCorpus = AblationCorpus(), pretraining: PretrainSettings = PretrainSettings(),
        finetuning: FinetuneSettings = FinetuneSettings(), report_dir: Path | None = None,
        threads: int | None = None) -> Path:
    """Pre-train each variant on the same corpus, token budget and seed; fine-tune each on the same tasks;
    write ablation.md, ablation.csv and ablation.png.

    Args:
        output_dir: Run folder (resumable): data/, pretrain/<variant>/, finetune/<variant>/<task>.json (and the
            SQuAD title lists it was fine-tuned with).
        select: Which variants and tasks (Selection).
        corpus: The pre-training corpus and the downstream data (AblationCorpus).
        pretraining: The pre-training recipe (PretrainSettings).
        finetuning: The fine-tuning recipe (FinetuneSettings).
        report_dir: Where the table and the plot go (default: output_dir).
        threads: CPU threads for torch.
    """
    from bertforge.options import check_options

    check_options({"select": select, "corpus": corpus, "pretraining": pretraining, "finetuning": finetuning,
                   "threads": threads})
    if threads:
        torch.set_num_threads(threads)
    output_dir = Path(output_dir)
    chosen = [dataclasses.replace(v, preset=pretraining.preset) if v not in VARIANTS["sizes"] else v
              for v in choose_variants(select.groups, select.variants)]
    prepared = prepare(corpus.sources(), output_dir, max_documents=corpus.max_documents,
                       vocab_size=corpus.vocab_size)
    counts, pre = prepared.meta["counts"], pretraining
    print(f"corpus: {counts['train']['tokens']:,} training tokens ({counts['train']['documents']:,} documents), "
          f"{counts['heldout']['tokens']:,} held out; each variant: {pre.steps} steps x {pre.batch_size} x "
          f"{pre.max_length} = {pre.steps * pre.batch_size * pre.max_length:,} tokens")
    preamble = _preamble(pre, finetuning, prepared, select.chosen_tasks)
    rows = []
    for variant in chosen:
        rows.append(ablate_variant(variant, prepared.directory, output_dir, Path(corpus.data_root), pre, finetuning,
                                   select.chosen_tasks, threads))
        paths = write_report(rows, select.chosen_tasks, Path(report_dir or output_dir), preamble)  # after every row
    print(f"table: {paths['markdown']} and {paths['csv']}; plot: {paths['plot']}")
    print(paths["markdown"].read_text(encoding="utf-8"))
    return paths["markdown"]


def ablate_variant(variant: Variant, data_dir: Path, output_dir: Path, data_root: Path, pre: PretrainSettings,
                   fine: FinetuneSettings, tasks: Sequence[str], threads: int | None) -> dict:
    """Pre-train one variant, fine-tune it on every task with every seed: its row of the report."""
    print(f"[{variant.name}] pre-training: objective {variant.objective}, positions {variant.position}, "
          f"preset {variant.preset}")
    summary = pretrain(variant, data_dir, output_dir / "pretrain" / variant.pretrain_name, pre, threads)
    model_dir = Path(summary["model_dir"])
    row = {"variant": variant, "pretrain": summary, "parameters": _parameters(model_dir), "tasks": {}}
    print(f"[{variant.name}] held-out: {summary['heldout']}")
    for task in tasks:
        records = []
        for seed in fine.seeds:
            name = f"{task}.json" if seed == FIRST_SEED else f"{task}-seed{seed}.json"
            records.append(finetune(variant, model_dir, task, data_root, fine, seed,
                                    output_dir / "finetune" / variant.name / name))
            print(f"[{variant.name}] {task} (seed {seed}): " + ", ".join(
                f"{k} {score(task, v):.2f}" for k, v in records[-1]["metrics"].items() if isinstance(v, float)))
        row["tasks"][task] = over_seeds(records)
    return row


def _parameters(model_dir: Path) -> int:
    from bertforge.checkpoint import read_weights

    state, _ = read_weights(model_dir)
    return sum(t.numel() for t in state.values())


def _preamble(pre: PretrainSettings, fine: FinetuneSettings, prepared, tasks: Sequence[str]) -> str:
    counts, seeds = prepared.meta["counts"], fine.seeds
    seeding = (f"seed {seeds[0]}" if len(seeds) == 1 else
               f"seeds {', '.join(map(str, seeds))} (mean ± standard deviation)")
    data = {"sst2": f"SST-2 first {fine.sst2_examples:,} training sentences, dev 872",
            "stsb": "STS-B train/dev (Spearman)",
            "mrpc": "MRPC train/dev",
            "ner": f"CoNLL-2003 first {fine.ner_sentences:,} training sentences, validation set",
            "squad": f"SQuAD v1.1 agreed split, first {fine.squad_train_questions:,} training / "
                     f"{fine.squad_eval_questions:,} evaluation questions, length {SQUAD_MAX_LENGTH}, "
                     f"stride {SQUAD_STRIDE}"}
    return (f"Pre-training: {pre.steps} steps x {pre.batch_size} x {pre.max_length} tokens "
            f"(budget {pre.budget}) per variant on {counts['train']['tokens']:,} corpus tokens, lr "
            f"{pre.learning_rate}, seed {pre.seed}, vocabulary {prepared.tokenizer().vocab_size:,}. Fine-tuning: "
            f"{fine.finetune_epochs:g} epochs, batch {fine.finetune_batch_size}, lr {fine.finetune_learning_rate}, "
            f"{seeding}; " + "; ".join(data[t] for t in tasks) + ". Best epoch on dev reported. "
            "Held-out perplexity of the LTR model is next-token perplexity, not comparable with MLM's.")
