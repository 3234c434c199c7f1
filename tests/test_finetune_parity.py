"""Fine-tuning step for step against `transformers`: the same weights, the same batches and the paper's recipe
(AdamW with decay off biases/LayerNorm, eps 1e-6, linear schedule, clipping at 1.0) trained by bertforge's
`train` and by a plain loop over the `transformers` model classes and their own losses must end at the same
model. Dropout is off so that the two runs are deterministic; everything else (heads, losses, masks, segment
ids, optimizer groups, schedule, clipping, batch order) is compared. The runs are long enough (20 steps, 5 of
them warmup) and the weight decay large enough (0.1) that an off-by-one in the warmup or a decayed bias shows."""

from __future__ import annotations

import math

import pytest
import torch

from bertforge.checkpoint import load_model, to_hf_state_dict
from bertforge.tasks import family
from bertforge.tasks.base import IGNORE_INDEX, Feature, collate
from bertforge.training.finetune_loop import TrainSettings, train

transformers = pytest.importorskip("transformers")

VOCAB, SEED, BATCH, EPOCHS, LR = 60, 7, 4, 4, 2e-3
N_FEATURES, WARMUP_RATIO, WEIGHT_DECAY = 20, 0.25, 0.1  # 20 steps, 5 of warmup


def _features(task_name: str, n: int = N_FEATURES) -> list[Feature]:
    """Random inputs of lengths 5-20 with the label layout of each family."""
    g = torch.Generator().manual_seed(1)
    features = []
    for i in range(n):
        length = int(torch.randint(5, 21, (1,), generator=g))
        ids = [2] + torch.randint(5, VOCAB, (length - 2,), generator=g).tolist() + [3]
        split = length // 3
        segments = [0] * split + [1] * (length - split)
        if task_name == "squad":
            start = int(torch.randint(split, length - 1, (1,), generator=g)) if i % 3 else 0  # some [CLS]: no answer
            label = (start, min(length - 2, start + int(torch.randint(0, 3, (1,), generator=g)))) if start else (0, 0)
        elif task_name == "ner":
            label = [IGNORE_INDEX] + [int(torch.randint(0, 3, (1,), generator=g)) if int(torch.randint(0, 4, (1,),
                     generator=g)) else IGNORE_INDEX for _ in range(length - 2)] + [IGNORE_INDEX]
        else:
            label = i % 2
        features.append(Feature(ids, segments if task_name != "ner" else [0] * length, label, i))
    return features


def _hf_labels(task_name: str, chosen: list[Feature]) -> dict[str, torch.Tensor]:
    if task_name == "squad":
        return {"start_positions": torch.tensor([f.label[0] for f in chosen]),
                "end_positions": torch.tensor([f.label[1] for f in chosen])}
    if task_name == "ner":
        width = max(len(f.input_ids) for f in chosen)
        return {"labels": torch.tensor([f.label + [IGNORE_INDEX] * (width - len(f.label)) for f in chosen])}
    return {"labels": torch.tensor([f.label for f in chosen])}


def _logits(output) -> torch.Tensor:
    if hasattr(output, "start_logits") and output.start_logits is not None:
        return torch.stack([output.start_logits, output.end_logits], -1)
    return output.logits


@pytest.mark.parametrize(("task_name", "hf_class", "num_labels"), [
    ("squad", "BertForQuestionAnswering", 2),
    ("ner", "BertForTokenClassification", 3),
    ("sst2", "BertForSequenceClassification", 2),
])
def test_training_matches_transformers_step_for_step(tmp_path, task_name, hf_class, num_labels):
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, num_labels=num_labels)
    torch.manual_seed(0)
    hf = getattr(transformers, hf_class)(config)
    hf.save_pretrained(tmp_path)
    task = family(task_name, labels=["O", "B-PER", "I-PER"]) if task_name == "ner" else family(task_name)
    ours = load_model(tmp_path, task.model_class, **task.model_kwargs())
    features = _features(task_name)
    probe = collate(features[:6], 0)
    with torch.no_grad():
        assert torch.allclose(_logits(ours.eval()(**probe)), _logits(hf.eval()(**probe)), atol=1e-5)
    before = {name: tensor.clone() for name, tensor in hf.state_dict().items()}

    settings = TrainSettings(epochs=EPOCHS, batch_size=BATCH, learning_rate=LR, seed=SEED, weight_decay=WEIGHT_DECAY,
                             warmup_ratio=WARMUP_RATIO, group_by_length=False, token_loss="batch_mean")
    train(ours, task, features, pad_id=0, settings=settings, progress=False)

    hf.train()
    no_decay = ("bias", "LayerNorm.weight")
    groups = [{"params": [p for n, p in hf.named_parameters() if not any(k in n for k in no_decay)],
               "weight_decay": WEIGHT_DECAY},
              {"params": [p for n, p in hf.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, eps=1e-6)
    total = math.ceil(len(features) / BATCH) * EPOCHS
    assert (total, int(WARMUP_RATIO * total)) == (20, 5)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, int(WARMUP_RATIO * total), total)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(EPOCHS):
        order = torch.randperm(len(features), generator=generator).tolist()
        for start in range(0, len(order), BATCH):
            chosen = [features[i] for i in order[start : start + BATCH]]
            loss = hf(**collate(chosen, 0), **_hf_labels(task_name, chosen)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()

    with torch.no_grad():
        theirs, mine = _logits(hf.eval()(**probe)), _logits(ours.eval()(**probe))
    torch.testing.assert_close(mine, theirs, atol=2e-4, rtol=1e-4)
    # Every weight, not only the logits: a bias that decays or a step taken at the wrong rate shows here even
    # where random labels leave the logits near where they started.
    their_weights = hf.state_dict()
    moved = max(float((their_weights[name] - before[name]).abs().max()) for name in before)
    assert moved > 0.01  # both trained: the comparison is not of two idle models
    for name, tensor in to_hf_state_dict(ours).items():
        if name == "qa_outputs.bias":
            continue  # one shift for every position: the softmax over positions cancels it, its gradient is rounding
        torch.testing.assert_close(tensor, their_weights[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
