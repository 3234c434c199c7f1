"""Pictures of position information: the sinusoidal table, learned position similarity, the classic
demonstration that without positions the two "I" of "I believe I can be the best." are the same vector, and
"I like this movie" / "I don't like this movie": absolute positions move with the inserted words, relative
ones do not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bertforge.config import BertConfig
from bertforge.model import BertModel
from bertforge.model.positions import sinusoidal_table
from bertforge.tokenizer import BertTokenizer

SCHEMES = ("learned", "sinusoidal", "relative_key", "relative_key_query", "rope", "alibi", "none")
SENTENCE = "I believe I can be the best."
LIKE = ("I like this movie", "I don't like this movie")  # "don't" is 3 pieces: the phrase moves 3 positions
PHRASE = ("like", "this", "movie")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sinusoidal(path: str | Path, num_positions: int = 128, dim: int = 128) -> Path:
    """Left: the value across dimensions for a few positions. Right: across positions for a few
    dimensions, where each pair (2i, 2i+1) is a sine/cosine of period 2π·10000^(2i/d)."""
    plt = _pyplot()
    table = sinusoidal_table(num_positions, dim).numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for p in (0, 1, 10, 50, 100):
        left.plot(table[p], label=f"position {p}", linewidth=1)
    left.set_xlabel("dimension")
    left.set_ylabel("PE value")
    left.set_title("across dimensions: low dimensions oscillate fast")
    left.legend(fontsize=8)
    for d in (0, 4, 16, 40):
        period = 2 * np.pi * 10000 ** (d / dim)
        right.plot(table[:, d], label=f"dim {d} (period {period:.0f})", linewidth=1)
    right.set_xlabel("position")
    right.set_title("across positions: each dimension is periodic")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_position_similarity(table: torch.Tensor, path: str | Path, title: str) -> Path:
    """Cosine similarity of every pair of position vectors ([P, H] table)."""
    plt = _pyplot()
    unit = torch.nn.functional.normalize(table.float(), dim=-1)
    similarity = (unit @ unit.T).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(similarity, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


@torch.inference_mode()
def same_token_distance(model: BertModel, tokenizer: BertTokenizer, sentence: str = SENTENCE,
                        token: str = "i") -> float:
    """Relative distance ||a - b|| / ||a|| between the final vectors of the first two occurrences of
    `token` (a cosine distance would round small differences away in float32)."""
    enc = tokenizer.encode(sentence, padding="longest")
    tokens = [tokenizer.id_to_token(int(i)) for i in enc.input_ids[0]]
    first, second = [i for i, t in enumerate(tokens) if t == token][:2]
    out = model(**enc.tensors()).sequence_output[0]
    return float((out[first] - out[second]).norm() / out[first].norm())


@torch.inference_mode()
def phrase_attention(model: BertModel, tokenizer: BertTokenizer, sentence: str,
                     phrase: Sequence[str] = PHRASE) -> torch.Tensor:
    """[A, W, W] layer-0 attention among the W words of `phrase`, as log-probabilities minus their row mean.

    Within a row, log p(i→j) − log p(i→k) = s_ij − s_ik: the softmax's normaliser (which sums over the
    whole sentence) cancels, so this is a function of the scores among the phrase alone."""
    enc = tokenizer.encode(sentence, padding="longest")
    tokens = [tokenizer.id_to_token(int(i)) for i in enc.input_ids[0]]
    at = [tokens.index(word) for word in phrase]
    probs = model(**enc.tensors(), output_attentions=True).attentions[0][0]  # [A, T, T]
    logs = probs[:, at][:, :, at].log()  # [A, W, W]
    return logs - logs.mean(-1, keepdim=True)


def phrase_shift(model: BertModel, tokenizer: BertTokenizer, sentences: Sequence[str] = LIKE) -> float:
    """Largest change of `phrase_attention` between the two sentences. Layer 0 sees the phrase's words with
    identical content in both; only their positions moved. Relative schemes score content and distance, so
    the change is 0 up to rounding; absolute schemes added each word a different position vector."""
    first, second = (phrase_attention(model, tokenizer, s) for s in sentences)
    return float((first - second).abs().max())


def _random_models(preset: str, seed: int):
    for scheme in SCHEMES:
        torch.manual_seed(seed)
        yield scheme, BertModel(BertConfig.from_preset(preset, position_embedding_type=scheme)).eval()


def scheme_distances(tokenizer: BertTokenizer, preset: str = "mini", seed: int = 0) -> dict[str, float]:
    """same_token_distance for a randomly initialised model of every position scheme (same seed)."""
    return {scheme: same_token_distance(model, tokenizer) for scheme, model in _random_models(preset, seed)}


def scheme_shifts(tokenizer: BertTokenizer, preset: str = "mini", seed: int = 0) -> dict[str, float]:
    """phrase_shift ("I like this movie" vs "I don't like this movie") for every position scheme (random init)."""
    return {scheme: phrase_shift(model, tokenizer) for scheme, model in _random_models(preset, seed)}


def plot_scheme_distances(distances: dict[str, float], path: str | Path, extra: dict[str, float]) -> Path:
    plt = _pyplot()
    names = list(distances) + list(extra)
    values = [max(v, 1e-12) for v in list(distances.values()) + list(extra.values())]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(names, values, color=["tab:gray" if n == "none" else "tab:blue" for n in distances] +
           ["tab:green"] * len(extra))
    ax.set_yscale("log")
    ax.set_ylabel("||v1 - v2|| / ||v1|| of the two 'i'")
    ax.set_title(f'"{SENTENCE}" — 0 means identical vectors (floored at 1e-12 for the log scale)', fontsize=9)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def run(model: str = "all-minilm-l6-v2", output_dir: Path = Path("docs/figures")) -> dict[str, float]:
    """Plot the sinusoidal encoding, the learned positions' similarity, and the "I believe I can" test; print
    how the "I like this movie" / "I don't like this movie" phrase attention moves under each scheme.

    Args:
        model: A model with learned positions (for its similarity matrix and tokenizer), or all-minilm-l6-v2.
        output_dir: Where the PNG files go.

    Returns the relative distance between the two "i" for each scheme (random init) and the trained model.
    """
    from bertforge.checkpoint import load_model
    from bertforge.pretrained import resolve_model

    directory = resolve_model(model)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizer.from_pretrained(directory)
    trained = load_model(directory)
    plot_sinusoidal(output_dir / "sinusoidal_positions.png")
    plot_position_similarity(sinusoidal_table(128, trained.config.hidden_size),
                             output_dir / "sinusoidal_similarity.png", "sinusoidal positions 0-127: cosine similarity")
    plot_position_similarity(trained.embeddings.position_table()[:128].detach(),
                             output_dir / "learned_position_similarity.png",
                             f"learned positions 0-127 of {directory.name}: cosine similarity")
    distances = scheme_distances(tokenizer)
    trained_distance = same_token_distance(trained, tokenizer)
    plot_scheme_distances(distances, output_dir / "same_token_by_scheme.png",
                          {"pre-trained (learned)": trained_distance})
    for scheme, value in distances.items():
        print(f"{scheme:>20}: relative distance between the two 'i' = {value:.3g}")
    print(f"{'pre-trained model':>20}: {trained_distance:.3g}")
    print(f'\n"{LIKE[0]}" vs "{LIKE[1]}": largest change of the layer-0 attention among "{" ".join(PHRASE)}"')
    for scheme, value in scheme_shifts(tokenizer).items():
        print(f"{scheme:>20}: {value:.3g}")
    print(f"{'pre-trained model':>20}: {phrase_shift(trained, tokenizer):.3g}")
    print(f"wrote 4 figures to {output_dir}")
    return {**distances, "pretrained": trained_distance}
