"""The causal LM head: parity with transformers BertLMHeadModel(is_decoder=True), cached = uncached
decoding, the shifted loss, and the sampling filters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bertforge.checkpoint import load_model, save_model
from bertforge.config import BertConfig
from bertforge.generation import filter_logits, generate, generate_ids
from bertforge.heads import BertLMHeadModel, causal_lm_loss
from bertforge.model import KVCache
from bertforge.tokenizer import BertTokenizer

transformers = pytest.importorskip("transformers")

ODD = BertConfig(vocab_size=99, hidden_size=36, num_layers=2, num_heads=3, intermediate_size=37,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def lm() -> BertLMHeadModel:
    torch.manual_seed(0)
    model = BertLMHeadModel(ODD).eval()
    with torch.no_grad():
        model.mlm.bias.normal_(0, 0.5)
    return model


def test_logits_match_transformers(lm: BertLMHeadModel, tmp_path: Path) -> None:
    save_model(lm, tmp_path)
    theirs, info = transformers.BertLMHeadModel.from_pretrained(str(tmp_path), output_loading_info=True,
                                                                attn_implementation="eager")
    theirs.eval()
    assert theirs.config.is_decoder and not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(5, 99, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    with torch.inference_mode():
        ours = lm(ids, mask).logits
        ref = theirs(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    assert (ours - ref)[real].abs().max() < 1e-5
    # The loss with labels shifted by one is what transformers computes from `labels`.
    with torch.inference_mode():
        ref_loss = theirs(input_ids=ids, labels=ids).loss
        assert causal_lm_loss(lm(ids).logits, ids).item() == pytest.approx(ref_loss.item(), abs=1e-5)
    assert type(load_model(tmp_path, BertLMHeadModel)) is BertLMHeadModel


def test_causality(lm: BertLMHeadModel) -> None:
    """Changing a later token never changes the logits at earlier positions."""
    ids = torch.randint(5, 99, (1, 10), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[0, 6] = 7
    with torch.inference_mode():
        a, b = lm(ids).logits, lm(changed).logits
    assert torch.equal(a[0, :6], b[0, :6])
    assert not torch.allclose(a[0, 6:], b[0, 6:])


def test_cached_decoding_equals_uncached(lm: BertLMHeadModel) -> None:
    prompt = [2, 17, 42, 8]
    cached, _ = generate_ids(lm, prompt, max_new_tokens=25, use_cache=True)
    uncached, _ = generate_ids(lm, prompt, max_new_tokens=25, use_cache=False)
    assert cached == uncached and len(cached) == 25
    # Step by step, the cached logits equal the full forward pass at the same position.
    ids = torch.tensor([prompt + cached])
    with torch.inference_mode():
        full = lm(ids).logits[0]
        cache = KVCache.empty(ODD.num_layers)
        step = lm(ids[:, :4], cache=cache).logits[0]
        rows = [step[-1]]
        for t in range(4, ids.shape[1] - 1):
            rows.append(lm(ids[:, t : t + 1], cache=cache).logits[0, -1])
    assert cache.length == ids.shape[1] - 1
    assert (torch.stack(rows) - full[3:-1]).abs().max() < 1e-5


def test_sampling_is_seeded_and_stops_at_sep(lm: BertLMHeadModel) -> None:
    g = lambda seed: generate_ids(lm, [2, 9], max_new_tokens=30, temperature=1.0, top_k=20,  # noqa: E731
                                  generator=torch.Generator().manual_seed(seed))[0]
    assert g(3) == g(3)
    assert g(3) != g(4)
    first = g(3)[0]
    ids, stopped = generate_ids(lm, [2, 9], max_new_tokens=30, temperature=1.0, top_k=20, stop_id=first,
                                generator=torch.Generator().manual_seed(3))
    assert stopped and ids == [first]


def test_filters() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0, -1.0])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [True, False, False, True, True]
    probs = F.softmax(logits, -1)  # 0.63, 0.23, 0.09, ...: the nucleus of 0.8 is the top two
    assert probs.sort(descending=True).values[:2].sum() > 0.8
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [True, False, False, True, True]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [True, False, True, True, True]


def test_generate_text_with_a_real_vocabulary(minilm_dir: Path) -> None:
    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    model = BertLMHeadModel(BertConfig.from_preset("tiny", hidden_dropout=0.0)).eval()
    sep = tokenizer.sep_id
    with torch.no_grad():
        model.mlm.bias.zero_()
        model.mlm.bias[sep] = 100.0  # make [SEP] the certain next token
    out = generate(model, tokenizer, "hello world", max_new_tokens=5)
    assert out.ids == [sep] and out.stopped and out.text == ""
    with torch.no_grad():
        model.mlm.bias[sep] = 0.0
        model.mlm.bias[tokenizer.token_to_id("cat")] = 100.0
    out = generate(model, tokenizer, "hello world", max_new_tokens=3)
    assert out.text == "cat cat cat" and not out.stopped


def test_cache_requires_causal() -> None:
    model = BertLMHeadModel(ODD)
    with pytest.raises(ValueError, match="causal"):
        model.bert(torch.tensor([[1, 2]]), cache=KVCache.empty(2))


def test_generate_job_loads_a_saved_causal_lm_and_continues_each_prompt(minilm_dir: Path, tmp_path: Path,
                                                                         capsys) -> None:
    from bertforge.cli import main

    tokenizer = BertTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    model = BertLMHeadModel(BertConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size)).eval()
    with torch.no_grad():
        model.mlm.bias.zero_()
        model.mlm.bias[tokenizer.token_to_id("dog")] = 100.0
    save_model(model, tmp_path / "lm", tokenizer=tokenizer)
    main(["generate", "--model", str(tmp_path / "lm"), "--prompt", "[a cat, the bird]", "--max-new-tokens", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["a cat → dog dog …", "the bird → dog dog …"]
