"""Position schemes: Hugging Face parity for relative_key(_query), the defining property of each scheme,
cached decoding with each, checkpoints that carry the scheme, and "I believe I can" without positions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bertforge.analysis.positions import LIKE, phrase_attention, phrase_shift
from bertforge.checkpoint import load_model, save_model
from bertforge.config import BertConfig
from bertforge.generation import generate_ids
from bertforge.heads import BertLMHeadModel
from bertforge.model import BertModel
from bertforge.model.positions import alibi_slopes, rope_rotate
from bertforge.tokenizer import BertTokenizer

ROOT = Path(__file__).resolve().parents[1]
# transformers 5 dropped BERT's relative positions; the Makefile installs 4.46.3 here as a reference.
HF4 = Path(os.environ.get("BERTFORGE_HF4_PATH", ROOT / ".ref" / "transformers4"))
ODD = BertConfig(vocab_size=99, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
SCHEMES = ["learned", "sinusoidal", "relative_key", "relative_key_query", "rope", "alibi", "none"]


def _inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 99, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("scheme", ["relative_key", "relative_key_query"])
def test_relative_positions_match_transformers_4(scheme: str, tmp_path: Path) -> None:
    if not (HF4 / "transformers").is_dir():
        pytest.skip(f"transformers 4.x reference not installed at {HF4} (make test installs it)")
    torch.manual_seed(0)
    ours = BertModel(ODD.replace(position_embedding_type=scheme)).eval()
    save_model(ours, tmp_path / "ours")
    inputs = _inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import torch, transformers
        from transformers import BertModel
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        model = BertModel.from_pretrained({str(tmp_path / 'ours')!r}, attn_implementation="eager").eval()
        assert model.config.position_embedding_type == {scheme!r}
        with torch.no_grad():
            out = model(**inputs).last_hidden_state
        torch.manual_seed(1)
        fresh = BertModel(model.config).eval()
        fresh.save_pretrained({str(tmp_path / 'theirs')!r})
        with torch.no_grad():
            fresh_out = fresh(**inputs).last_hidden_state
        torch.save({{"ours_in_hf": out, "theirs": fresh_out, "version": transformers.__version__}},
                   {str(tmp_path / 'out.pt')!r})
    """)
    env = {**os.environ, "PYTHONPATH": str(HF4), "TRANSFORMERS_VERBOSITY": "error"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    result = torch.load(tmp_path / "out.pt")
    assert result["version"].startswith("4.")
    real = inputs["attention_mask"].bool()
    with torch.inference_mode():
        assert (ours(**inputs).sequence_output - result["ours_in_hf"])[real].abs().max() < 1e-5
        back = load_model(tmp_path / "theirs")
        assert back.config.position_embedding_type == scheme
        assert (back(**inputs).sequence_output - result["theirs"])[real].abs().max() < 1e-5


@pytest.mark.parametrize("scheme", ["relative_key", "relative_key_query", "rope", "alibi"])
def test_relative_schemes_are_translation_invariant(scheme: str) -> None:
    """Only distances matter: shifting every position by 5 changes nothing (it does for absolute ones)."""
    torch.manual_seed(0)
    model = BertModel(ODD.replace(position_embedding_type=scheme)).eval()
    ids = torch.randint(5, 99, (2, 8))
    with torch.inference_mode():
        a = model(ids).sequence_output
        b = model(ids, position_ids=torch.arange(5, 13)).sequence_output
    assert (a - b).abs().max() < 1e-5
    learned = BertModel(ODD).eval()
    with torch.inference_mode():
        assert (learned(ids).sequence_output - learned(ids, position_ids=torch.arange(5, 13)).sequence_output
                ).abs().max() > 1e-3


def test_no_positions_is_a_bag_of_tokens() -> None:
    torch.manual_seed(0)
    model = BertModel(ODD.replace(position_embedding_type="none")).eval()
    ids = torch.randint(5, 99, (1, 8))
    perm = torch.randperm(8)
    with torch.inference_mode():
        a = model(ids).sequence_output[0]
        b = model(ids[:, perm]).sequence_output[0]
    assert (a[perm] - b).abs().max() < 1e-5


def test_i_believe_i_can(minilm_dir: Path) -> None:
    """The two "i" of "I believe I can be the best." get identical vectors only without positions."""
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    enc = tokenizer.encode("I believe I can be the best.", padding="longest")
    tokens = [tokenizer.id_to_token(i) for i in enc.input_ids[0]]
    first, second = [i for i, t in enumerate(tokens) if t == "i"]
    for scheme in SCHEMES:
        torch.manual_seed(0)
        model = BertModel(BertConfig.from_preset("tiny", position_embedding_type=scheme)).eval()
        with torch.inference_mode():
            out = model(**enc.tensors()).sequence_output[0]
        gap = (out[first] - out[second]).abs().max().item()
        if scheme == "none":
            assert gap == 0.0  # the same computation on the same inputs: bitwise equal
        else:
            # Random-init distance tables are small (std 0.02), so relative schemes differ by ~1e-4 at
            # init: still three orders above float rounding, and exactly zero only without positions.
            assert gap > 1e-4, scheme


def test_like_dont_like_moves_only_absolute_positions(tmp_path: Path) -> None:
    """ "don't" (3 pieces) shifts "like this movie" by 3 positions: the layer-0 attention among the phrase
    stays the same under relative schemes (and without positions) and changes under absolute ones."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "like", "this", "movie", "don", "'", "t"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_vocab(tmp_path / "vocab.txt")
    assert tokenizer.tokenize(LIKE[1]) == ["i", "don", "'", "t", "like", "this", "movie"]
    for scheme in SCHEMES:
        torch.manual_seed(0)
        model = BertModel(ODD.replace(position_embedding_type=scheme)).eval()
        assert phrase_attention(model, tokenizer, LIKE[0]).shape == (3, 3, 3)
        shift = phrase_shift(model, tokenizer)
        if scheme in ("learned", "sinusoidal"):  # random init: small weights, small but clear changes (~1e-2)
            assert shift > 1e-3, scheme
        else:  # float rounding (~2e-7)
            assert shift < 1e-5, scheme


def test_alibi_slopes() -> None:
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]
    twelve = alibi_slopes(12).tolist()
    assert twelve[:8] == [2.0 ** -k for k in range(1, 9)]
    assert twelve[8:] == pytest.approx([2.0 ** -(k + 0.5) for k in range(4)])  # every other slope of 16


def test_rope_depends_only_on_relative_position() -> None:
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    def score(m: int, n: int) -> float:
        return float((rope_rotate(q, torch.tensor([m])) * rope_rotate(k, torch.tensor([n]))).sum())
    assert score(7, 3) == pytest.approx(score(14, 10), abs=1e-6)  # angles are float32
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)
    rotated = rope_rotate(q, torch.tensor([11]))
    assert rotated.norm().item() == pytest.approx(q.norm().item(), abs=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_cached_decoding_with_every_scheme(scheme: str) -> None:
    torch.manual_seed(0)
    model = BertLMHeadModel(ODD.replace(position_embedding_type=scheme)).eval()
    cached, _ = generate_ids(model, [2, 11, 40], max_new_tokens=12, use_cache=True)
    uncached, _ = generate_ids(model, [2, 11, 40], max_new_tokens=12, use_cache=False)
    assert cached == uncached


@pytest.mark.parametrize("scheme", SCHEMES)
def test_checkpoints_carry_the_scheme(scheme: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BertModel(ODD.replace(position_embedding_type=scheme)).eval()
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert again.config.position_embedding_type == scheme
    inputs = _inputs()
    with torch.inference_mode():
        assert torch.equal(model(**inputs).sequence_output, again(**inputs).sequence_output)
