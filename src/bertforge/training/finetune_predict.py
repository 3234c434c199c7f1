"""`bertforge predict`: run a fine-tuned model over new data, one output per input, in input order.

Classification and multiple choice write a CSV (`label` + one probability column per class), NER a CoNLL
file (`word TAG` per line), SQuAD a JSON object {question id: answer} as the official script reads it.

    bertforge predict --model out/tweets --input test.csv --text-column text --id-column id \\
        --label-output-column target --probabilities false --output submission.csv
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from bertforge.errors import DataError
from bertforge.files import check_output_file, write_atomic, write_text_atomic
from bertforge.options import check_length, resolve_device


def run(
    model: Path,
    input: Path,
    output: Path,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    id_column: str | None = None,
    label_output_column: str = "label",
    probabilities: bool = True,
    max_length: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> Path:
    """Predict with a model saved by `bertforge finetune`.

    Args:
        model: The fine-tuned model directory.
        input: Data without labels: CSV/TSV/JSONL (classification, swag), CoNLL (ner), SQuAD JSON (squad).
        output: Where to write the predictions (.csv, CoNLL text, or .json for squad).
        text_column: The text column (default: the one the model was trained with).
        text_pair_column: The second-text column of pair tasks (default: as trained).
        id_column: Copy this input column into the output first (e.g. id for a Kaggle submission).
        label_output_column: Name of the predicted-label column.
        probabilities: Add one probability column per class (prob_<label>).
        max_length: Override the maximum length used in training.
        batch_size: Inference batch size.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
    """
    from bertforge.data.tables import read_records
    from bertforge.tasks.classification import SequenceClassification, TextExample, _text
    from bertforge.tasks.multiple_choice import MultipleChoice
    from bertforge.tasks.ner import TokenClassification
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.finetune_loop import load_task_model, predict_outputs

    check_output_file(output, inputs=(input,))
    net, task = load_task_model(model)
    settings = json.loads((Path(model) / "config.json").read_text(encoding="utf-8")).get("bertforge_task", {})
    max_length = max_length or settings.get("max_seq_length", 128)
    check_length("--max-length", max_length, net.config.max_position_embeddings, str(model))
    tokenizer = BertTokenizer.from_pretrained(model)
    net = net.to(resolve_device(device))

    def outputs_for(examples):
        if not examples:
            raise DataError(f"{input}: no examples to predict (only a header line?)")
        features = task.features(examples, tokenizer, max_seq_length=max_length)
        return features, predict_outputs(net, task, features, pad_id=tokenizer.pad_id, batch_size=batch_size,
                                         progress=True)

    if isinstance(task, SequenceClassification):
        text_column = text_column or settings.get("text_column") or "text"
        text_pair_column = text_pair_column or settings.get("text_pair_column")
        columns = {text_column: "--text-column", text_pair_column: "--text-pair-column", id_column: "--id-column"}
        rows = read_records(input, required={c: option for c, option in columns.items() if c})
        examples = [TextExample(_text(r[text_column], f"{input}:{r['_line']}", text_column),
                                _text(r[text_pair_column], f"{input}:{r['_line']}", text_pair_column)
                                if text_pair_column else None, None, f"{input}:{r['_line']}") for r in rows]
        features, outputs = outputs_for(examples)
        labels, probs = task.predict(task.example_scores(features, outputs, len(examples)))
        names = task.label_names or ["score"]
        _write_table(output, rows, id_column, label_output_column, labels, probs if probabilities else None, names)
    elif isinstance(task, MultipleChoice):
        rows = read_records(input, required={id_column: "--id-column"} if id_column else ())
        examples = task.read(input, labelled=False)
        features, outputs = outputs_for(examples)
        import numpy as np

        scores = np.stack(outputs)
        probs = np.exp(scores - scores.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        _write_table(output, rows, id_column, label_output_column, [int(i) for i in probs.argmax(1)],
                     probs if probabilities else None, [str(i) for i in range(task.num_choices)])
    elif isinstance(task, TokenClassification):
        sentences = task.read(input, labelled=False)
        features, outputs = outputs_for(sentences)
        tags = task.word_tags(sentences, features, outputs)
        lines = ["\n".join(f"{w} {t}" for w, t in zip(s.words, ts, strict=True)) + "\n"
                 for s, ts in zip(sentences, tags, strict=True)]
        write_text_atomic(output, "\n".join(lines))
    else:  # question answering
        examples = task.read(input)
        features, outputs = outputs_for(examples)
        write_text_atomic(output, json.dumps(task.predictions(examples, features, outputs), indent=2) + "\n")
    print(f"wrote predictions for {input} to {output}")
    return Path(output)


def _write_table(path: Path, rows: list[dict], id_column: str | None, label_column: str, labels, probs,
                 names: list[str]) -> None:
    header = ([id_column] if id_column else []) + [label_column] + \
        ([f"prob_{n}" for n in names] if probs is not None else [])

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for i, row in enumerate(rows):
                label = ";".join(labels[i]) if isinstance(labels[i], list) else labels[i]
                values = ([row[id_column]] if id_column else []) + [label]
                writer.writerow(values + ([f"{p:.6f}" for p in probs[i]] if probs is not None else []))

    write_atomic(path, write)
