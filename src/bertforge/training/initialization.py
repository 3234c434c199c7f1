"""Starting points for pre-training from scratch that keep the Hugging Face BERT layout.

Both change only the initial values of ordinary weights, so the saved model loads into transformers as
any other. They aim at the long unigram plateau of a small model's first millions of tokens (it predicts
"the" everywhere until attention learns to look at its neighbours):

- sinusoidal positions: the learned position table starts from the Transformer's sinusoids, so from step 0
  neighbouring positions differ and an offset between positions is a linear map (a rotation per frequency);
- local attention: in the first layer, one head starts looking at the previous token and one at the next,
  built from those rotations. Early layers of trained BERTs have such heads (Clark et al., 2019, "What
  does BERT look at?"); a model from scratch has to find them first, and that search is the plateau.
"""

from __future__ import annotations

import torch

from bertforge.errors import OptionError
from bertforge.model.positions import sinusoidal_table

LOCAL_OFFSETS = (-1, 1)  # the heads of layer 0 that start local: previous token, next token
LOCAL_MARGIN = 3.0  # attention logit of the target position above that of its neighbours, at the start


@torch.no_grad()
def init_positions_sinusoidal(weight: torch.Tensor, std: float) -> None:
    """Start the learned position table [P, H] from the Transformer's sinusoids, scaled to the std of
    the token embeddings. It stays an ordinary learned table (the Hugging Face layout), but from step 0
    neighbouring positions are told apart, and an offset is a linear map of the vectors, so attention
    can look at "the previous token" early (the random 0.02 table must first learn positions)."""
    table = sinusoidal_table(weight.shape[0], weight.shape[1])
    weight.copy_(table * (std / table.std()))


@torch.no_grad()
def init_local_attention(model: torch.nn.Module, offsets: tuple[int, ...] = LOCAL_OFFSETS,
                         margin: float = LOCAL_MARGIN) -> None:
    """Make head a of layer 0 attend to position i + offsets[a] from every position i, at the start.

    Needs the sinusoidal position table (init_positions_sinusoidal). Its first D dimensions (D = head size)
    hold the D/2 fastest sinusoid pairs (sin ωp, cos ωp). Each local head's query reads those dimensions
    as they are and its key reads them rotated by -ω·offset, so query i · key j = Σ_ω cos(ω(i + offset - j)):
    largest at j = i + offset. To keep token identity from blurring that at the start, the token and
    segment embeddings start at zero in those D dimensions (they are free to grow into them)."""
    config = model.config
    size, hidden = config.head_size, config.hidden_size
    if len(offsets) > config.num_heads:
        raise OptionError(f"--attention-init local starts {len(offsets)} heads of layer 0 as local ones, but the "
                          f"model has {config.num_heads}: use more heads or --attention-init random")
    embeddings = model.bert.embeddings
    embeddings.word_embeddings.weight[:, :size] = 0
    embeddings.token_type_embeddings.weight[:, :size] = 0
    amplitude = _position_amplitude(model, size)
    frequencies = torch.exp(torch.arange(size // 2, dtype=torch.float64) * (-2 * torch.log(torch.tensor(1e4)) / hidden))
    spread = (1 - torch.cos(frequencies)).sum().item()  # Σ cos at offset 0 minus Σ cos one position away
    scale = (margin * size ** 0.5 / (spread * amplitude ** 2)) ** 0.5  # on query and key alike
    qkv = model.bert.layers[0].attention.qkv
    for head, offset in enumerate(offsets):
        rows = slice(head * size, (head + 1) * size)
        query, key = qkv.weight[rows], qkv.weight[hidden:][rows]
        query.zero_()
        key.zero_()
        query[:, :size] = scale * torch.eye(size)
        for pair, omega in enumerate(frequencies.tolist()):
            angle = torch.tensor(omega * offset)
            cos, sin = torch.cos(angle).item(), torch.sin(angle).item()
            i = 2 * pair  # dims i (sin) and i + 1 (cos) of one frequency
            key[i, i], key[i, i + 1] = scale * cos, -scale * sin
            key[i + 1, i], key[i + 1, i + 1] = scale * sin, scale * cos
        qkv.bias[rows] = 0
        qkv.bias[hidden:][rows] = 0


def _position_amplitude(model: torch.nn.Module, size: int) -> float:
    """Root-mean-square length of one sinusoid pair in the first `size` dimensions after the embedding
    LayerNorm, over random tokens at every position: how large the query/key inputs really are."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(config.vocab_size, (8, config.max_position_embeddings), generator=generator)
    was_training = model.training
    model.eval()
    vectors = model.bert.embeddings(tokens)  # [8, P, H]
    model.train(was_training)
    return (vectors[..., :size].pow(2).sum(-1) / (size // 2)).mean().sqrt().item()
