"""The ablation machinery: the left-to-right objective, the causal pooler, the BiLSTM head, loading an
MLM-only checkpoint into a task model, and `bertforge ablate` end to end on data written here."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch

from bertforge.analysis import ablate
from bertforge.analysis.ablate import (
    Variant,
    _same_settings,
    choose_variants,
    over_seeds,
    parse_tokens,
)
from bertforge.analysis.ablation_models import BiLSTMOnTop, LeftToRight
from bertforge.cli import call_job, main
from bertforge.config import BertConfig
from bertforge.data.pretraining import PreTrainingBatch
from bertforge.errors import OptionError
from bertforge.heads import BertForSequenceClassification, BertLMHeadModel
from bertforge.model import BertModel
from bertforge.training.pretrain import losses, next_token_targets

TINY = BertConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                  hidden_dropout=0.0, attention_dropout=0.0)


def _batch(rows: list[list[int]]) -> PreTrainingBatch:
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = (ids != 0).long()
    return PreTrainingBatch(ids, torch.zeros_like(ids), mask, ids == 0, torch.zeros(len(rows), dtype=torch.long))


def test_next_token_targets_predict_each_following_real_token_only():
    masked = next_token_targets(_batch([[2, 5, 6, 3], [2, 7, 3]]))
    assert masked.labels.tolist() == [[5, 6, 3, -100], [7, 3, -100, -100]]
    assert masked.masked_positions.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert torch.equal(masked.input_ids, torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]))  # nothing is corrupted


def test_ltr_loss_at_a_position_ignores_every_later_token():
    torch.manual_seed(0)
    model = BertLMHeadModel(TINY).eval()
    a, b = _batch([[2, 5, 6, 7, 8, 3]]), _batch([[2, 5, 6, 9, 9, 3]])  # differ from position 3 on
    first = torch.zeros(1, 6, dtype=torch.bool)
    first[0, :2] = True  # positions 0 and 1 predict tokens 1 and 2, which both rows share
    outs = [model(x.input_ids, x.attention_mask, masked_positions=first) for x in (a, b)]
    torch.testing.assert_close(outs[0].logits, outs[1].logits)
    stats = losses(outs[0], next_token_targets(a).labels[first], a.nsp_labels)
    assert set(stats) == {"mlm_term", "mlm_sum", "mlm_correct", "mlm_count"} and int(stats["mlm_count"]) == 2


def test_causal_pooler_reads_the_last_real_token_whatever_the_padding():
    torch.manual_seed(0)
    model = BertModel(TINY).eval()
    alone = torch.tensor([[2, 5, 6, 3]])
    padded = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 8, 9, 10, 3]])
    mask = (padded != 0).long()
    one = model(alone, causal=True)
    both = model(padded, mask, causal=True)
    torch.testing.assert_close(both.pooled_output[0], one.pooled_output[0], atol=1e-5, rtol=1e-5)
    expected = torch.tanh(model.pooler.dense(one.sequence_output[0, -1]))
    torch.testing.assert_close(one.pooled_output[0], expected)
    # Bidirectional use keeps [CLS].
    first_token = model(alone).sequence_output[0, 0]
    torch.testing.assert_close(model(alone).pooled_output[0], torch.tanh(model.pooler.dense(first_token)))


def test_bilstm_on_top_is_padding_invariant_and_pools_both_directions():
    torch.manual_seed(0)
    wrapped = BiLSTMOnTop(BertModel(TINY)).eval()
    alone = wrapped(torch.tensor([[2, 5, 6, 3]]), torch.ones(1, 4, dtype=torch.long))
    padded_ids = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 8, 9, 10, 3]])
    both = wrapped(padded_ids, (padded_ids != 0).long())
    torch.testing.assert_close(both.sequence_output[0, :4], alone.sequence_output[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.pooled_output[0], alone.pooled_output[0], atol=1e-5, rtol=1e-5)
    half = TINY.hidden_size // 2
    states = alone.sequence_output[0]
    torch.testing.assert_close(alone.pooled_output[0], torch.cat([states[-1, :half], states[0, half:]]))


def test_left_to_right_task_model_cannot_see_later_tokens():
    torch.manual_seed(0)
    net = LeftToRight(BertForSequenceClassification(TINY, num_labels=2)).eval()
    a = torch.tensor([[2, 5, 6, 7, 3]])
    b = torch.tensor([[2, 5, 6, 9, 3]])  # differs at position 3
    ha, hb = (net(x).encoder.sequence_output for x in (a, b))
    torch.testing.assert_close(ha[:, :3], hb[:, :3])
    assert not torch.allclose(ha[:, 3:], hb[:, 3:])


@pytest.mark.parametrize(("wrapper", "flags"), [
    (LeftToRight, {"position_ids", "output_hidden_states", "output_attentions"}),  # always causal: no flag
    (BiLSTMOnTop, {"position_ids", "output_hidden_states", "output_attentions", "causal", "first_token_only"}),
])
def test_ablation_models_name_their_flags_and_refuse_a_misspelt_one(wrapper: type, flags: set[str]):
    """No `**kwargs`, so a misspelt flag is a TypeError at the wrapper, and every flag reaches the encoder."""
    parameters = inspect.signature(wrapper.forward).parameters
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    assert {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} == flags
    torch.manual_seed(0)
    net = BertForSequenceClassification(TINY, num_labels=2).eval()
    if wrapper is BiLSTMOnTop:
        net.bert = BiLSTMOnTop(net.bert)  # as `ablate` builds the "+ BiLSTM" row
    else:
        net = LeftToRight(net)
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    with pytest.raises(TypeError, match="output_hiden_states"):
        net(ids, output_hiden_states=True)
    with torch.no_grad():
        out = net(ids, output_hidden_states=True, output_attentions=True)
        shifted = net(ids, position_ids=torch.arange(3, 8)[None])
    assert len(out.encoder.hidden_states) == TINY.num_layers + 1 and len(out.encoder.attentions) == TINY.num_layers
    assert not torch.allclose(shifted.logits, out.logits)


def test_left_to_right_with_a_bilstm_keeps_the_encoder_causal():
    """The LTR + BiLSTM row: `causal` passes through the BiLSTM to the encoder; only the BiLSTM reads ahead."""
    torch.manual_seed(0)
    head = BertForSequenceClassification(TINY, num_labels=2).eval()
    head.bert = BiLSTMOnTop(head.bert)
    net = LeftToRight(head)
    a, b = torch.tensor([[2, 5, 6, 7, 3]]), torch.tensor([[2, 5, 6, 9, 3]])  # differ at position 3
    with torch.no_grad():
        (ea, sa), (eb, sb) = ((o.encoder.hidden_states[-1], o.encoder.sequence_output)
                              for o in (net(x, output_hidden_states=True) for x in (a, b)))
    torch.testing.assert_close(ea[:, :3], eb[:, :3])  # the encoder did not look ahead
    assert not torch.allclose(sa[:, :3], sb[:, :3])  # the BiLSTM's backward direction does


def test_a_task_model_loads_an_mlm_only_checkpoint_with_a_fresh_pooler(tmp_path, caplog):
    from bertforge.checkpoint import load_model, save_model
    from bertforge.heads import BertForMaskedLM

    torch.manual_seed(0)
    source = BertForMaskedLM(TINY)
    save_model(source, tmp_path)
    loaded = load_model(tmp_path, BertForSequenceClassification, num_labels=2)
    assert torch.equal(loaded.bert.embeddings.word_embeddings.weight, source.bert.embeddings.word_embeddings.weight)
    assert "bert.pooler.dense.weight" in caplog.text  # reported as freshly initialised


def test_parse_tokens_and_variant_choice():
    assert parse_tokens("4M") == 4_000_000 and parse_tokens("500k") == 500_000 and parse_tokens(2000) == 2000
    with pytest.raises(ValueError, match="not a token count"):
        parse_tokens("lots")
    names = [v.name for v in choose_variants(None, ["ltr_bilstm"])]
    assert names == ["bert", "ltr", "ltr_bilstm"]  # the reference row and the shared pre-training come first
    with pytest.raises(ValueError, match="unknown variant"):
        choose_variants(None, ["bogus"])


@pytest.mark.parametrize(("args", "message"), [
    (["--budget", "lots"], "--budget 'lots' is not a token count; write e.g. 4M, 500k or 2000000"),
    (["--tasks", "[sst2,cola]"], "--tasks: unknown task(s) cola; choose from sst2, stsb, mrpc, squad, ner"),
    (["--preset", "huge"], "--preset: unknown preset(s) huge; choose from tiny, mini, small, medium, base, large"),
])
def test_a_bad_option_is_refused_in_one_line_naming_it(args, message, capsys):
    """Before any corpus is read: the option, what is wrong and what to write instead."""
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--output-dir", "/nonexistent/run", *args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"bertforge: error: {message}\n"


# ----- end to end on data written here ------------------------------------------------------------
def run(**options) -> Path:
    """ablate.run with its options named as on the command line (the settings groups are built from them)."""
    return call_job(ablate.run, options)


def _write_data(root: Path) -> None:
    from pydoc_data.topics import topics

    docs = [topics[key] for key in sorted(topics)[:40]]
    (root / "corpus").mkdir()
    (root / "corpus" / "docs.txt").write_text(
        "\n\n".join("\n".join(line for line in doc.splitlines() if line.strip()) for doc in docs))
    good, bad = ["a fine and lovely film", "great fun"], ["a dull mess", "boring and bad"]
    sst = root / "glue" / "SST-2"
    sst.mkdir(parents=True)
    lines = ["sentence\tlabel"] + [f"{t}\t1" for t in good] * 6 + [f"{t}\t0" for t in bad] * 6
    (sst / "train.tsv").write_text("\n".join(lines) + "\n")
    (sst / "dev.tsv").write_text("\n".join(lines[:1] + lines[1:25:3]) + "\n")
    stsb = root / "glue" / "STS-B"
    stsb.mkdir(parents=True)
    pairs = ["index\tsentence1\tsentence2\tscore"]
    pairs += [f"{i}\tthe cat sat {i}\tthe cat sat {i if i % 3 else i + 1}\t{(i % 6) * 1.0:.1f}" for i in range(24)]
    (stsb / "train.tsv").write_text("\n".join(pairs) + "\n")
    (stsb / "dev.tsv").write_text("\n".join(pairs[:13]) + "\n")
    mrpc = root / "glue" / "MRPC"
    mrpc.mkdir(parents=True)
    rows = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    rows += [f"{i % 2}\t{i}\t{i + 100}\tthe cat sat {i}\tthe cat sat {i if i % 2 else i + 1}" for i in range(20)]
    (mrpc / "train.tsv").write_text("\n".join(rows) + "\n")
    (mrpc / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
    conll = root / "conll2003"
    conll.mkdir()
    sentences = ["EU B-ORG|rejects O|German B-MISC|call O", "Peter B-PER|Blackburn I-PER|spoke O",
                 "Paris B-LOC|is O|big O"]
    text = "-DOCSTART- -X- -X- O\n\n" + "".join(
        "".join(f"{w} X X {tag}\n" for w, tag in (pair.split(" ") for pair in s.split("|"))) + "\n"
        for s in sentences * 4)
    (conll / "train.txt").write_text(text)
    (conll / "valid.txt").write_text(text)
    context = "The function returns a list of names. It was added in version three."
    questions = [("What does it return?", "a list of names"), ("When was it added?", "version three")]

    def article(title: str) -> dict:
        qas = [{"id": f"{title}-{i}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
               for i, (q, a) in enumerate(questions)]
        return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}

    data = {"data": [article("Python"), article("Kenya")]}  # Kenya is an evaluation article of the agreed split
    (root / "squad").mkdir()
    (root / "squad" / "dev-v1.1.reconstructed.json").write_text(json.dumps(data))


def test_ablate_end_to_end_writes_the_table_and_the_plot_and_resumes(tmp_path):
    _write_data(tmp_path)
    out = tmp_path / "run"
    options = dict(output_dir=out, budget="3k", variants=["ltr_bilstm", "scratch", "pos_rope"],
                   files=[tmp_path / "corpus"],
                   max_documents=40, vocab_size=300, data_root=tmp_path, max_length=32, batch_size=8,
                   finetune_epochs=1, finetune_batch_size=8, squad_train_questions=2, squad_eval_questions=2)
    table = run(**options)
    rows = list(csv.DictReader((out / "ablation.csv").open(encoding="utf-8")))
    assert [r["variant"] for r in rows] == ["MLM + NSP (BERT)", "LTR & No NSP", "LTR & No NSP + BiLSTM",
                                            "no pre-training (random init)", "positions: rope"]
    trained = [r for r in rows if r["variant"] != "no pre-training (random init)"]
    assert all(r["pre-training tokens"] == f"{(3000 // (8 * 32)) * 8 * 32:,}" for r in trained)
    assert rows[3]["pre-training tokens"] == "0" and rows[3]["held-out MLM ppl"] == "—"
    for r in rows:
        for column in ("SST-2 acc", "MRPC F1", "SQuAD F1", "NER F1"):
            assert 0.0 <= float(r[column]) <= 100.0
        assert -100.0 <= float(r["STS-B Spearman"]) <= 100.0  # a correlation
    assert rows[0]["paper SST-2 acc"] == "92.7" and rows[4]["paper SST-2 acc"] == ""
    assert rows[1]["held-out MLM acc"] == "—" and rows[1]["held-out NSP acc"] == "—"
    assert (out / "ablation.png").stat().st_size > 10_000
    assert "| LTR & No NSP + BiLSTM |" in table.read_text(encoding="utf-8")
    # The ltr pre-training is shared by two rows, and a second call redoes nothing.
    assert sorted(p.name for p in (out / "pretrain").iterdir()) == ["bert", "ltr", "pos_rope", "scratch"]
    # SQuAD is fine-tuned as `bertforge finetune --titles --eval-titles` would be, on the agreed split.
    titles = out / "finetune" / "bert"
    assert (titles / "squad_train_titles.txt").read_text(encoding="utf-8") == "Python\n"
    assert (titles / "squad_eval_titles.txt").read_text(encoding="utf-8") == "Kenya\n"
    record = json.loads((titles / "squad.json").read_text(encoding="utf-8"))
    assert record["eval_examples"] == 2 and {"exact_match", "f1"} <= set(record["metrics"])
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    run(**options)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == stamps
    # A second fine-tuning seed adds its own result files, reuses the first, and shows mean ± deviation.
    again = run(**{**options, "variants": ["pos_rope"], "finetune_seeds": [42, 7], "tasks": ["sst2"],
                   "report_dir": tmp_path / "seeds"})
    assert (out / "finetune" / "pos_rope" / "sst2-seed7.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rows = list(csv.DictReader((tmp_path / "seeds" / "ablation.csv").open(encoding="utf-8")))
    assert " ± " in rows[-1]["SST-2 acc"] and "seeds 42, 7" in again.read_text(encoding="utf-8")
    # The same folder with another corpus would compare variants trained on different data: refused.
    with pytest.raises(ValueError, match="corpus.json.*new --output-dir"):
        run(**{**options, "vocab_size": 400})


def test_results_cached_before_a_variant_field_was_added_still_count():
    variant = Variant("bert", "MLM + NSP (BERT)")
    settings = {"epochs": 3.0}
    wanted = {"variant": dataclasses.asdict(variant), **settings}
    older = {"variant": {k: v for k, v in wanted["variant"].items() if k != "pretrained"}, **settings}
    assert _same_settings(older, wanted)
    assert not _same_settings({**older, "epochs": 2.0}, wanted)
    scratch = dataclasses.replace(variant, pretrained=False)
    assert not _same_settings(older, {"variant": dataclasses.asdict(scratch), **settings})


def test_over_seeds_reports_mean_and_sample_deviation():
    records = [{"metrics": {"accuracy": a, "note": "x"}, "settings": {"seed": s}} for s, a in ((42, 0.7), (1, 0.8))]
    result = over_seeds(records)
    assert result["metrics"] == pytest.approx({"accuracy": 0.75})
    assert result["std"]["accuracy"] == pytest.approx(0.0707107, abs=1e-6) and result["seeds"] == [42, 1]
    assert over_seeds(records[:1])["std"] == {}


def test_the_budget_recipe_starts_every_variant_it_can_and_keeps_rows_unpacked(tmp_path):
    _write_data(tmp_path)
    out = tmp_path / "run"
    run(output_dir=out, budget="2k", variants=["no_nsp", "pos_rope"], tasks=["stsb"], recipe="budget", preset="mini",
        files=[tmp_path / "corpus"], max_documents=40, vocab_size=300, data_root=tmp_path, max_length=32,
        batch_size=8, finetune_epochs=1, finetune_batch_size=8)
    saved = {name: json.loads((out / "pretrain" / name / "config.json").read_text(encoding="utf-8"))
             for name in ("bert", "no_nsp", "pos_rope")}
    assert {name: (c["objective"], c["packing"]) for name, c in saved.items()} == {
        "bert": ("mlm_nsp", False), "no_nsp": ("mlm", False), "pos_rope": ("mlm_nsp", False)}
    assert saved["bert"]["attention_init"] == "local" and saved["bert"]["masking_rate"] == 0.3
    assert {c["preset"] for c in saved.values()} == {"mini"}  # --preset sizes every variant outside the sizes group
    assert saved["pos_rope"]["attention_init"] == "random"  # no learned table to start the local heads from
    summary = json.loads((out / "pretrain" / "bert" / "summary.json").read_text(encoding="utf-8"))
    assert summary["settings"]["recipe"] == "budget"


def test_an_unknown_ablation_recipe_is_refused_before_any_work(tmp_path):
    with pytest.raises(OptionError, match="--recipe: unknown recipe"):
        run(output_dir=tmp_path / "run", recipe="fast")
    assert not (tmp_path / "run").exists()
