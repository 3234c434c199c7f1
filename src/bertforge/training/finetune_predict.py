"""`bertforge predict`: run a fine-tuned model over new data, one output per input, in input order.

Classification and multiple choice write a CSV (`label` + one probability column per class), NER a CoNLL
file (`word TAG` per line), SQuAD a JSON object {question id: answer} as the official script reads it.

    bertforge predict --model out/tweets --input test.csv --text-column text --id-column id \\
        --label-output-column target --probabilities false --output submission.csv
    bertforge predict --model out/sst2 --dataset glue:sst2 --id-column idx --output test.csv   # the Hub's test split
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertforge.data import hf_datasets
from bertforge.data.tables import source_name
from bertforge.errors import DataError, OptionError
from bertforge.files import check_output_file
from bertforge.options import check_length
from bertforge.precision import InferencePrecision, inference_device, resolve_precision


@dataclass(frozen=True)
class PredictionData:
    """Data.

    Args:
        input: Data without labels: .csv/.tsv/.jsonl/.parquet (classification, swag), CoNLL (ner), SQuAD JSON
            (squad), a folder saved by `datasets`' save_to_disk, or (Python API) a `datasets.Dataset`.
        dataset: Instead of --input, a Hugging Face Hub dataset, name[:config] (glue:sst2); its --split is read.
            Needs `datasets` and the network.
        split: The split of --dataset to predict.
        text_column: The text column (default: the one the model was trained with).
        text_pair_column: The second-text column of pair tasks (default: as trained).
        max_length: Override the maximum length used in training.
    """

    input: Path | None = None
    dataset: str | None = None
    split: str = "test"
    text_column: str | None = None
    text_pair_column: str | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class PredictionColumns:
    """Output columns.

    Args:
        id_column: Copy this input column into the output first (e.g. id for a Kaggle submission).
        label_output_column: Name of the predicted-label column.
        probabilities: Add one probability column per class (prob_<label>).
    """

    id_column: str | None = None
    label_output_column: str = "label"
    probabilities: bool = True


def run(model: str, output: Path | None = None, data: PredictionData = PredictionData(),
        columns: PredictionColumns = PredictionColumns(), batch_size: int = 64, device: str = "auto",
        precision: InferencePrecision = "fp32") -> Path:
    """Predict with a model saved by `bertforge finetune`.

    Args:
        model: The fine-tuned model: its directory, or its Hub id (org/name).
        output: Where to write the predictions (.csv, CoNLL text, or .json for squad); required.
        data: The examples to predict, and the saved settings they override (PredictionData).
        columns: What the output holds besides the predictions (PredictionColumns).
        batch_size: Inference batch size.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (a bf16 copy of the model; GPUs and CPUs with native bf16), fp16, int8 (CPU)
            or auto (bf16 where the hardware has it natively), as on finetune.
    """
    from bertforge.pretrained import resolve_model
    from bertforge.tasks.base import PredictionTable
    from bertforge.tasks.registry import saved_task_settings, task_max_length
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.finetune_loop import load_task_model, predict_outputs, ready_to_predict

    if output is None:  # required; defaults to None so that leaving it out gets this message, with the fix
        raise OptionError("--output: give the file to write the predictions to (.csv; CoNLL text for ner; "
                          ".json for squad)")
    run_on = inference_device(device, precision)
    running_precision = resolve_precision(precision, run_on)
    check_output_file(output, inputs=(data.input,))
    source = hf_datasets.input_or_dataset(data.input, data.dataset, data.split)
    directory = resolve_model(model)  # the model, its saved settings and its tokenizer all come from here
    net, task = load_task_model(directory, text_column=data.text_column, text_pair_column=data.text_pair_column)
    max_length = task_max_length(saved_task_settings(directory), data.max_length, default=128)
    check_length("--max-length", max_length, net.config.max_position_embeddings, str(model))
    # Every input problem (columns, ids, format) is found before the model runs.
    ids = task.read_ids(source, columns.id_column) if columns.id_column else None
    examples = task.read(source, labelled=False)
    if not examples:
        raise DataError(f"{source_name(source)}: no examples to predict (only a header line?)")
    tokenizer = BertTokenizer.from_pretrained(directory)
    features = task.features(examples, tokenizer, max_seq_length=max_length)
    outputs = predict_outputs(ready_to_predict(net, run_on, running_precision, tokenizer=tokenizer), task, features,
                              pad_id=tokenizer.pad_id, batch_size=batch_size, progress=True,
                              precision=running_precision)
    task.write_predictions(output, examples, features, outputs,
                           PredictionTable(columns.id_column, ids, columns.label_output_column, columns.probabilities))
    print(f"wrote predictions for {source_name(source)} to {output}")
    return Path(output)
