"""Stand-ins for ../shared/data and the packaged checkpoint, for a machine that has neither (a fresh GPU box).

    python benchmarks/synthetic.py OUT [--no-base]

writes OUT/data/glue/SST-2/{train,dev}.tsv, OUT/data/wikipedia/wiki_AA.txt.gz (sentences of the words of
inference/tiny.py), and two random-weight models with the packaged checkpoint's vocabulary when it is
installed, else the tiny one (either holds every word of the texts): OUT/minilm (all-MiniLM-L6-v2's
shape: 6 layers, H=384) and OUT/base (BERT-base's shape). Speed depends on shapes and lengths, not on words
or weights, so throughput measured on these equals throughput on the real ones; accuracy figures from them
mean nothing. It writes only folders that do not exist yet: real data is never overwritten.
Sentence lengths follow a log-normal mix like the real data's: SST-2 around 10-20 words, Wikipedia ~25.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch

from bertforge.checkpoint import save_model
from bertforge.config import BertConfig
from bertforge.inference.tiny import WORDS, tiny_tokenizer
from bertforge.model import BertModel
from bertforge.pretrained import packaged_model_dir
from bertforge.tokenizer import BertTokenizer

VOCABULARY = [w for w in WORDS if w.isalpha()]
POSITIVE, NEGATIVE = {"good", "great", "love"}, {"bad", "hate"}


def sentences(n: int, median_words: float, rng: np.random.Generator) -> list[list[str]]:
    lengths = np.clip(rng.lognormal(np.log(median_words), 0.6, n).astype(int), 3, 120)
    return [list(rng.choice(VOCABULARY, size=length)) for length in lengths]


def label(words: list[str]) -> int:
    """1 when positive words outnumber negative ones: a signal fine-tuning can learn."""
    return int(sum(w in POSITIVE for w in words) > sum(w in NEGATIVE for w in words))


def write_data(out: Path, rng: np.random.Generator, *, train: int = 20000, dev: int = 872) -> None:
    glue = out / "glue" / "SST-2"
    glue.mkdir(parents=True, exist_ok=True)
    for name, n, median in (("train.tsv", train, 9), ("dev.tsv", dev, 18)):
        rows = [f"{' '.join(words)} .\t{label(words)}\n" for words in sentences(n, median, rng)]
        (glue / name).write_text("sentence\tlabel\n" + "".join(rows), encoding="utf-8")
    (out / "wikipedia").mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "wikipedia" / "wiki_AA.txt.gz", "wt", encoding="utf-8") as handle:
        for _ in range(6000):  # paragraphs of 4 sentences (bench_inference splits them back)
            handle.write(" ".join(" ".join(words) + "." for words in sentences(4, 25, rng)) + "\n")


def write_model(out: Path, config_changes: dict) -> None:
    packaged = packaged_model_dir()
    tok = BertTokenizer.from_pretrained(packaged) if packaged is not None else tiny_tokenizer(out)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, **config_changes)).eval()
    save_model(model, out, tokenizer=tok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--no-base", action="store_true", help="leave out OUT/base (440 MB of random weights)")
    args = parser.parse_args()
    targets = [args.out / "data", args.out / "minilm"] + ([] if args.no_base else [args.out / "base"])
    existing = [str(path) for path in targets if path.exists()]
    if existing:  # OUT=../shared would otherwise overwrite the real data sets with stand-ins
        parser.error(f"OUT {args.out}: {', '.join(existing)} already exist(s); synthetic.py writes only new "
                     "folders, so nothing there is overwritten: give an empty or new folder")
    try:
        write_data(args.out / "data", np.random.default_rng(0))
        write_model(args.out / "minilm", dict(hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536))
        if not args.no_base:
            write_model(args.out / "base", {})
    except OSError as error:
        parser.error(f"OUT {args.out}: {error.strerror or error} ({error.filename}); give a folder that can be written")
    print(f"wrote {args.out}/data, {args.out}/minilm" + ("" if args.no_base else f", {args.out}/base"))


if __name__ == "__main__":
    main()
