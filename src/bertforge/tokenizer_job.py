"""`bertforge train-vocab`: learn a WordPiece vocabulary from text files."""

from __future__ import annotations

from pathlib import Path

from bertforge.files import check_output_dir
from bertforge.tokenizer import BertTokenizer


def run(files: list[Path], output_dir: Path, vocab_size: int = 30522, min_frequency: int = 2,
        lowercase: bool = True) -> Path:
    """Train a WordPiece vocabulary and write vocab.txt, tokenizer.json and tokenizer_config.json.

    Args:
        files: Text files (plain or .gz), one sentence or paragraph per line.
        output_dir: Where to write the vocabulary (created if needed).
        vocab_size: Target vocabulary size, special tokens included.
        min_frequency: Pairs seen fewer times are not merged.
        lowercase: Lower-case and strip accents (an uncased model).
    """
    check_output_dir(output_dir)
    tokenizer = BertTokenizer.train(files, vocab_size=vocab_size, min_frequency=min_frequency,
                                    lowercase=lowercase, show_progress=True)
    tokenizer.save_pretrained(output_dir)
    print(f"wrote {tokenizer.vocab_size:,} tokens to {Path(output_dir) / 'vocab.txt'}")
    return Path(output_dir)
