"""`bertforge evaluate`: the official metrics of a fine-tuned model on labelled data.

    bertforge evaluate --model out/sst2 --input ../shared/data/glue/SST-2/dev.tsv
    bertforge evaluate --model out/sst2 --dataset glue:sst2 --precision auto     # the Hub's validation split
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bertforge.data import hf_datasets
from bertforge.data.tables import source_name
from bertforge.errors import DataError
from bertforge.files import check_output_file, write_text_atomic
from bertforge.options import check_length
from bertforge.precision import InferencePrecision, inference_device, resolve_precision


@dataclass(frozen=True)
class EvaluationData:
    """Data.

    Args:
        input: Labelled data in the task's format: a file (GLUE TSV, .csv/.tsv/.jsonl/.parquet, CoNLL, SQuAD JSON,
            SWAG CSV), a folder saved by `datasets`' save_to_disk, or (Python API) a `datasets.Dataset`.
        dataset: Instead of --input, a Hugging Face Hub dataset, name[:config] (glue:sst2); its --split is read.
            Needs `datasets` and the network.
        split: The split of --dataset to evaluate on (MNLI: validation_matched or validation_mismatched).
        titles: SQuAD: a text file of the article titles to evaluate on (one per line).
        text_column: Override the text column saved with the model.
        text_pair_column: Override the second-text column saved with the model.
        label_column: Override the label column saved with the model.
        max_length: Override the maximum length used in training.
        max_eval_examples: Evaluate only the first N examples.
    """

    input: Path | None = None
    dataset: str | None = None
    split: str = "validation"
    titles: Path | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_length: int | None = None
    max_eval_examples: int | None = None


def run(model: str, data: EvaluationData = EvaluationData(), output: Path | None = None, batch_size: int = 64,
        device: str = "auto", precision: InferencePrecision = "fp32") -> dict:
    """Score a model saved by `bertforge finetune` on labelled data with its task's official metrics.

    Args:
        model: The fine-tuned model: its directory, or its Hub id (org/name).
        data: The labelled examples, and the saved settings they override (EvaluationData).
        output: Also write the metrics here as JSON.
        batch_size: Evaluation batch size.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (a bf16 copy of the model; GPUs and CPUs with native bf16), fp16, int8 (CPU)
            or auto (bf16 where the hardware has it natively), as on finetune.
    """
    from bertforge.pretrained import resolve_model
    from bertforge.tasks.registry import saved_task_settings, task_max_length
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.finetune import _lines
    from bertforge.training.finetune_loop import EvalSet, evaluate, load_task_model, ready_to_predict

    run_on = inference_device(device, precision)
    running_precision = resolve_precision(precision, run_on)
    if output is not None:
        check_output_file(output, inputs=(data.input,))
    source = hf_datasets.input_or_dataset(data.input, data.dataset, data.split)
    directory = resolve_model(model)  # the model, its saved settings and its tokenizer all come from here
    net, task = load_task_model(directory, text_column=data.text_column, text_pair_column=data.text_pair_column,
                                label_column=data.label_column)
    max_length = task_max_length(saved_task_settings(directory), data.max_length, default=128)
    check_length("--max-length", max_length, net.config.max_position_embeddings, str(model))
    tokenizer = BertTokenizer.from_pretrained(directory)
    examples = task.read(source, titles=_lines(data.titles)) if data.titles else task.read(source)
    examples = examples[:data.max_eval_examples] if data.max_eval_examples else examples
    if not examples:
        raise DataError(f"{source_name(source)}: no examples to evaluate (only a header line?)")
    features = task.features(examples, tokenizer, max_seq_length=max_length)
    metrics = evaluate(ready_to_predict(net, run_on, running_precision, tokenizer=tokenizer), task,
                       EvalSet(source_name(source), examples, features), pad_id=tokenizer.pad_id,
                       batch_size=batch_size, progress=True, precision=running_precision)
    metrics = {"examples": len(examples), **metrics}
    print(json.dumps(metrics, indent=2))
    if output is not None:
        write_text_atomic(output, json.dumps(metrics, indent=2) + "\n")
    return metrics
