"""`bertforge predict`: run a fine-tuned model over new data, one output per input, in input order.

Classification and multiple choice write a CSV (`label` + one probability column per class), NER a CoNLL
file (`word TAG` per line), SQuAD a JSON object {question id: answer} as the official script reads it.

    bertforge predict --model out/tweets --input test.csv --text-column text --id-column id \\
        --label-output-column target --probabilities false --output submission.csv
"""

from __future__ import annotations

from pathlib import Path

from bertforge.errors import DataError
from bertforge.files import check_output_file
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
    from bertforge.tasks.base import PredictionTable
    from bertforge.tasks.registry import saved_task_settings
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.finetune_loop import load_task_model, predict_outputs

    check_output_file(output, inputs=(input,))
    net, task = load_task_model(model, text_column=text_column, text_pair_column=text_pair_column)
    max_length = max_length or saved_task_settings(model).get("max_seq_length", 128)
    check_length("--max-length", max_length, net.config.max_position_embeddings, str(model))
    # Every input problem (columns, ids, format) is found before the model runs.
    ids = task.read_ids(input, id_column) if id_column else None
    examples = task.read(input, labelled=False)
    if not examples:
        raise DataError(f"{input}: no examples to predict (only a header line?)")
    tokenizer = BertTokenizer.from_pretrained(model)
    features = task.features(examples, tokenizer, max_seq_length=max_length)
    outputs = predict_outputs(net.to(resolve_device(device)), task, features, pad_id=tokenizer.pad_id,
                              batch_size=batch_size, progress=True)
    task.write_predictions(output, examples, features, outputs,
                           PredictionTable(id_column, ids, label_output_column, probabilities))
    print(f"wrote predictions for {input} to {output}")
    return Path(output)
