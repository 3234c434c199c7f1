"""Side by side: bertforge fine-tuning vs transformers' `Trainer` with `train_sampling_strategy="group_by_length"`
(what its `group_by_length=True` became), its strongest setting on a CPU, or vs the plain PyTorch loop its users
write (`--peer loop`: random batches padded to their longest member, no length grouping).

Same checkpoint, same hyper-parameters (AdamW, weight decay 0.01 off biases/LayerNorm, linear warmup 10% and
decay, grad clip 1.0), same seed, same examples, same precision (`--precision bf16`: autocast on both sides,
the Trainer's `bf16=True`; only where the processor computes bf16 natively). Prints the task metrics, the
training wall-clock, CPU time, steps/s and MFU of each (useful matmul work, ×3 for training, flops.py) and
the ratios. On a small CPU use a subset; with more compute drop --train-examples to run everything. The process
keeps the memory it frees for reuse, as `bertforge finetune` does (hardware.keep_freed_memory), for both sides
alike; `--glibc-defaults` leaves the allocator as it is.

    python benchmarks/bench_finetune.py --task sst2 --train-examples 4000 --epochs 1
    python benchmarks/bench_finetune.py --task ner --train-examples 2000 --epochs 1
    python benchmarks/bench_finetune.py --task squad --train-examples 1000 --eval-examples 500 --max-seq-length 256

SST-2 uses each side's own tokenizer (bertforge's vs transformers' BertTokenizer), inside the timer. For NER and
SQuAD both sides train on the features bertforge builds (same tokens; transformers ships no CoNLL/SQuAD reader
outside its example scripts) and are scored by the same official-metric code; only model code and loop differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from _speed import add_allocator_option, apply_allocator_option, mfu_text, precision_context

from bertforge.checkpoint import config_from_hf, load_model, read_config
from bertforge.flops import encoder_flops
from bertforge.hardware import bf16_skip_reason
from bertforge.pretrained import resolve_model
from bertforge.tasks.base import Feature, collate
from bertforge.tasks.qa import agreed_split
from bertforge.tasks.registry import family
from bertforge.tokenizer import BertTokenizer
from bertforge.training.finetune import with_dropout
from bertforge.training.finetune_loop import EvalSet, TrainSettings, evaluate, predict_outputs, seed_everything, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_data(args, task):
    if args.task == "sst2":
        return task.read(args.data / "glue/SST-2/train.tsv"), task.read(args.data / "glue/SST-2/dev.tsv")
    if args.task == "ner":
        return task.read(args.data / "conll2003/train.txt"), task.read(args.data / "conll2003/test.txt")
    return agreed_split(task.read(args.data / "squad/dev-v1.1.reconstructed.json"))


# ----- transformers side --------------------------------------------------------------------------
def hf_model(args, model_dir: Path, task):
    import transformers

    cls = {"sst2": transformers.BertForSequenceClassification, "ner": transformers.BertForTokenClassification,
           "squad": transformers.BertForQuestionAnswering}[args.task]
    kwargs = {"num_labels": len(task.label_names)} if args.task != "squad" else {}
    return cls.from_pretrained(str(model_dir), hidden_dropout_prob=args.dropout,
                               attention_probs_dropout_prob=args.dropout, attn_implementation=args.peer_attention,
                               **kwargs)


def shared_head_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw the new head (the last Linear: classifier / span / qa_outputs) from its own generator, N(0, 0.02)
    weights and zero bias as BERT initialises it, so that both sides start from the very same model."""
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.02)
        head.bias.zero_()
    return model


def hf_sst2_batches(args, model_dir: Path, examples, shuffle: bool, generator):
    """What a transformers user writes: its tokenizer, padding to the longest in a random batch."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    order = torch.randperm(len(examples), generator=generator).tolist() if shuffle else list(range(len(examples)))
    for start in range(0, len(order), args.batch_size if shuffle else args.eval_batch_size):
        chosen = [examples[i] for i in order[start : start + (args.batch_size if shuffle else args.eval_batch_size)]]
        batch = tokenizer([e.text for e in chosen], padding="longest", truncation=True,
                          max_length=args.max_seq_length, return_tensors="pt")
        batch["labels"] = torch.tensor([int(e.label) for e in chosen])
        yield batch


def hf_train(args, model_dir: Path, task, train_examples, train_features, eval_examples, eval_features,
             pad_id: int) -> tuple[dict, float]:
    from transformers import get_linear_schedule_with_warmup

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    model = hf_model(args, model_dir, task).train()
    if args.shared_head_init:
        shared_head_init(model, args.seed)
    model.to(args.device)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": 0.01},
              {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
               "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, eps=1e-6)
    n_train = len(train_examples) if args.task == "sst2" else len(train_features)
    total = math.ceil(n_train / args.batch_size) * args.epochs
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
    generator = torch.Generator().manual_seed(args.seed)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.epochs):
        if args.task == "sst2":
            batches = hf_sst2_batches(args, model_dir, train_examples, True, generator)
        else:
            batches = _hf_feature_batches(task, train_features, args.batch_size, generator, pad_id)
        for batch in batches:
            # Autocast around each forward only: it caches its bf16 copies of the weights until the outermost
            # autocast context exits, so one context around the whole loop would train on step 1's weights.
            with precision_context(args.precision, args.device):
                if args.task == "sst2":
                    loss = model(**_to(batch, args.device)).loss
                else:
                    inputs, labels = batch
                    loss = task.loss(model(**_to(inputs, args.device)), _to(labels, args.device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    seconds = (time.perf_counter() - started, time.process_time() - cpu)
    model.eval()
    if args.task == "sst2":
        correct = 0
        with torch.inference_mode():
            for batch in hf_sst2_batches(args, model_dir, eval_examples, False, generator):
                labels = batch.pop("labels").to(args.device)
                correct += int((model(**_to(batch, args.device)).logits.argmax(-1) == labels).sum())
        return {"accuracy": correct / len(eval_examples)}, seconds
    outputs = predict_outputs(model, task, eval_features, pad_id=pad_id, batch_size=args.eval_batch_size)
    return task.evaluate(eval_examples, eval_features, outputs), seconds


def trainer_train(args, model_dir: Path, task, train_examples, train_features, eval_examples, eval_features,
                  pad_id: int) -> tuple[dict, tuple[float, float]]:
    """transformers' Trainer, batches grouped by length, its default (fused) AdamW."""
    import tempfile

    from transformers import AutoTokenizer, Trainer, TrainingArguments

    torch.manual_seed(args.seed)
    model = hf_model(args, model_dir, task)
    if args.shared_head_init:
        shared_head_init(model, args.seed)
    started, cpu = time.perf_counter(), time.process_time()
    if args.task == "sst2":  # its own tokenizer, inside the timer as on our side
        enc = AutoTokenizer.from_pretrained(str(model_dir))([e.text for e in train_examples], truncation=True,
                                                            max_length=args.max_seq_length)
        train_features = [Feature(ids, types, int(e.label)) for ids, types, e
                          in zip(enc["input_ids"], enc["token_type_ids"], train_examples, strict=True)]
    # The sampler reads each item's "input_ids" for its length; the collator pads as bertforge's collate does.
    dataset = [{"input_ids": f.input_ids, "feature": f} for f in train_features]
    with tempfile.TemporaryDirectory() as output_dir:
        settings = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
            learning_rate=args.learning_rate, weight_decay=0.01, adam_epsilon=1e-6, warmup_steps=0.1,
            lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed, bf16=args.precision == "bf16",
            use_cpu=args.device == "cpu", report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=True, remove_unused_columns=False, dataloader_num_workers=0,
            train_sampling_strategy="random" if args.no_length_grouping else "group_by_length",
            torch_compile=args.peer_compile)
        trainer = Trainer(model=model, args=settings, train_dataset=dataset,
                          data_collator=lambda items: trainer_collate(task, items, pad_id))
        trainer.train()
    seconds = (time.perf_counter() - started, time.process_time() - cpu)
    outputs = predict_outputs(model, task, eval_features, pad_id=pad_id, batch_size=args.eval_batch_size)
    return task.evaluate(eval_examples, eval_features, outputs), seconds


# transformers' QA heads take the answer span as start_positions / end_positions.
HF_LABEL_NAMES = {"start": "start_positions", "end": "end_positions"}


def trainer_collate(task, items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    chosen = [item["feature"] for item in items]
    batch = collate(chosen, pad_id)
    batch.update({HF_LABEL_NAMES.get(k, k): v for k, v in task.labels(chosen).items()})
    return batch


def _to(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _hf_feature_batches(task, features, batch_size, generator, pad_id):
    order = torch.randperm(len(features), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        chosen = [features[i] for i in order[start : start + batch_size]]
        yield collate(chosen, pad_id), task.labels(chosen)


# ----- bertforge side ------------------------------------------------------------------------------
def ours_train(args, model_dir: Path, task, train_examples, eval_examples) -> tuple[dict, float, list, list]:
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    seed_everything(args.seed)  # the new head's weights, as on the transformers side
    model = with_dropout(load_model(model_dir, task.model_class, **task.model_kwargs()), args.dropout)
    if args.shared_head_init:
        shared_head_init(model, args.seed)
    model.to(args.device)
    started, cpu = time.perf_counter(), time.process_time()  # tokenization counts, as on the other side
    features = task.features(train_examples, tokenizer, max_seq_length=args.max_seq_length, train=True)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                             seed=args.seed, group_by_length=not args.no_length_grouping, token_loss=args.token_loss)
    # train() enters autocast around each forward itself (never one context around the loop: see hf_train).
    result = train(model, task, features, (), pad_id=tokenizer.pad_id, settings=settings, progress=False,
                   precision=args.precision)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    eval_features = task.features(eval_examples, tokenizer, max_seq_length=args.max_seq_length)
    metrics = evaluate(model, task, EvalSet("eval", eval_examples, eval_features), pad_id=tokenizer.pad_id,
                       batch_size=args.eval_batch_size)
    del result
    return metrics, (seconds, cpu), features, eval_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("sst2", "ner", "squad"), default="sst2")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with glue/, conll2003/, squad/")
    parser.add_argument("--train-examples", type=int, default=4000, help="first N training examples; 0 = all")
    parser.add_argument("--eval-examples", type=int, default=0, help="first N evaluation examples; 0 = all")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", choices=("ours", "transformers"), default=None)
    parser.add_argument("--peer", choices=("trainer", "loop"), default="trainer",
                        help="transformers' Trainer grouping by length (its best CPU setting), or the plain "
                             "random-batch loop (the step-for-step reference with --no-length-grouping)")
    parser.add_argument("--peer-attention", choices=("sdpa", "eager"), default="sdpa",
                        help="transformers' attention: SDPA (its default) or eager, which trains faster in bf16 on "
                             "a CPU, where SDPA's fused backward is slow; run both to find the peer's strongest")
    parser.add_argument("--peer-compile", action="store_true",
                        help="the Trainer with torch_compile=True (its compile time is part of its training time)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="both sides; bf16 = autocast, only where the processor computes bf16 natively")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--transformers-first", action="store_true",
                        help="run the transformers side first (to check that machine load did not favour one side)")
    parser.add_argument("--no-length-grouping", action="store_true",
                        help="both sides draw random batches (with --peer loop: the same seed and permutation): "
                             "isolates the implementation from the batch order")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="hidden, attention and head dropout on both sides; 0 with --no-length-grouping and "
                             "--shared-head-init makes the two runs deterministic and comparable step for step")
    parser.add_argument("--shared-head-init", action="store_true",
                        help="both sides draw the new head from one dedicated generator (same starting model); with "
                             "--dropout 0 and --no-length-grouping nothing random differs between the sides")
    parser.add_argument("--token-loss", choices=("auto", "constant", "batch_mean"), default="auto",
                        help="NER, bertforge side: each batch's summed token loss over the mean scored tokens per "
                             "batch (constant; auto = constant with length grouping) or over its own count")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    add_allocator_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    apply_allocator_option(args)
    reason = bf16_skip_reason(args.device) if args.precision == "bf16" else None
    if reason is not None:
        print(f"{args.task} bf16: {reason}")
        return
    model_dir = resolve_model(args.model)
    task = family(args.task, doc_stride=args.doc_stride)
    train_examples, eval_examples = load_data(args, task)
    train_examples = train_examples[: args.train_examples] if args.train_examples else train_examples
    eval_examples = eval_examples[: args.eval_examples] if args.eval_examples else eval_examples
    task.fit_labels(train_examples)
    print(f"{args.task}: {len(train_examples)} training examples, {len(eval_examples)} evaluation examples, "
          f"{args.epochs} epoch(s), batch {args.batch_size}, lr {args.learning_rate}, "
          f"max_seq_length {args.max_seq_length}, seed {args.seed}, {args.threads} threads, {args.precision}, "
          f"{args.device}; peer: {PEERS[args.peer]}, {args.peer_attention} attention", flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}}
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    features = task.features(train_examples, tokenizer, max_seq_length=args.max_seq_length, train=True)
    eval_features = task.features(eval_examples, tokenizer, max_seq_length=args.max_seq_length)
    lengths = [f.length for f in features]
    finished = [1] * len(lengths) if args.task == "sst2" else None  # a pooled classifier reads only [CLS]
    flops = args.epochs * encoder_flops(config_from_hf(read_config(model_dir)), lengths, training=True,
                                        finished=finished)
    steps = math.ceil(len(features) / args.batch_size) * args.epochs

    def record(side: str, metrics: dict, seconds: tuple[float, float], load: float) -> None:
        report[side] = {"metrics": metrics, "train_seconds": seconds[0], "train_cpu_seconds": seconds[1],
                        "steps_per_s": steps / seconds[0], "load_before": load}
        print(f"{side + ':':13s} {_fmt(metrics)}  train {seconds[0]:.1f}s wall, {seconds[1]:.1f}s CPU, "
              f"{steps / seconds[0]:.2f} steps/s  {mfu_text(flops, seconds[0], args.precision, args.device)} "
              f"(load average {load:.1f})", flush=True)

    def run_ours():
        nonlocal features, eval_features
        load = os.getloadavg()[0]
        metrics, seconds, features, eval_features = ours_train(args, model_dir, task, train_examples, eval_examples)
        record("bertforge", metrics, seconds, load)

    def run_transformers():
        load = os.getloadavg()[0]
        peer = trainer_train if args.peer == "trainer" else hf_train
        metrics, seconds = peer(args, model_dir, task, train_examples, features, eval_examples, eval_features,
                                tokenizer.pad_id)
        record("transformers", metrics, seconds, load)

    warm_up_lazy_imports()
    sides = {"ours": run_ours, "transformers": run_transformers}
    for name in (("transformers", "ours") if args.transformers_first else ("ours", "transformers")):
        if args.skip != name:
            sides[name]()
    if "bertforge" in report and "transformers" in report:
        ratio = report["transformers"]["train_seconds"] / report["bertforge"]["train_seconds"]
        cpu_ratio = report["transformers"]["train_cpu_seconds"] / report["bertforge"]["train_cpu_seconds"]
        report["speedup"], report["cpu_speedup"] = ratio, cpu_ratio
        print(f"bertforge is {ratio:.2f}x the speed of {PEERS[args.peer]} in training wall-clock, "
              f"{cpu_ratio:.2f}x in CPU time (robust to other load on a shared machine)")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2, default=float) + "\n")


def warm_up_lazy_imports() -> None:
    """torch imports torch._dynamo (~1.2 s) the first time an optimizer is built and stepped; whichever side ran
    first paid it inside its timer. Pay it here, once, outside both."""
    param = torch.zeros(2, requires_grad=True)
    param.grad = torch.ones(2)
    for fused in (None, True):
        torch.optim.AdamW([param], fused=fused).step()


PEERS = {"trainer": "transformers Trainer (group_by_length)", "loop": "a plain transformers loop (random batches)"}


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float) and "/" not in k)


if __name__ == "__main__":
    main()
