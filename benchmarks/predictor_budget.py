"""Which token budget per batch should the Predictor use? Embedding throughput of all-MiniLM-L6-v2 at
several `max_tokens`, beside `embed_texts`' 32-text batches, on the texts bench_inference.py uses.

Large packed batches make large activations ([tokens, intermediate] floats: 8,192 x 1,536 x 4 bytes = 50 MB
for MiniLM), which no longer fit the processor's cache, so the elementwise work between the matmuls
(GELU, LayerNorm, residual adds) waits on memory; small batches pay more per-call overhead. This measures
where the balance lies on this machine. Run it with nothing else running.

    python benchmarks/predictor_budget.py --texts 1000 --budgets 512 1024 2048 4096 8192 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_inference import DATA, load_texts

from bertforge.checkpoint import load_model
from bertforge.inference.embed import embed_texts
from bertforge.inference.predictor import Predictor
from bertforge.pretrained import packaged_model_dir
from bertforge.tokenizer import BertTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    directory = packaged_model_dir()
    model, tok = load_model(directory), BertTokenizer.from_pretrained(directory)
    texts = load_texts(DATA, args.texts)
    runs = {f"Predictor, max_tokens {b}": Predictor(model, tok, max_tokens=b, max_length=256) for b in args.budgets}
    runs["embed_texts, 32 texts a batch"] = None
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.repeats):  # in turns, so a disturbance hits every setting alike
        for name, predictor in runs.items():
            start = time.perf_counter()
            if predictor is None:
                embed_texts(model, tok, texts, normalize=True, max_length=256, batch_size=32)
            else:
                embed_texts(model, tok, texts, normalize=True, max_length=256, predictor=predictor)
            best[name] = min(best[name], time.perf_counter() - start)
    for name, seconds in best.items():
        print(f"{name:<34} {len(texts) / seconds:8.1f} texts/s")


if __name__ == "__main__":
    main()
