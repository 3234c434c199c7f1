"""`bertforge evaluate`: the official metrics of a fine-tuned model on labelled data.

    bertforge evaluate --model out/sst2 --input ../shared/data/glue/SST-2/dev.tsv
"""

from __future__ import annotations

import json
from pathlib import Path

from bertforge.errors import DataError
from bertforge.files import check_output_file, write_text_atomic
from bertforge.options import check_length, resolve_device


def run(
    model: Path,
    input: Path,
    output: Path | None = None,
    titles: Path | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    max_eval_examples: int | None = None,
    device: str = "auto",
) -> dict:
    """Score a model saved by `bertforge finetune` on a labelled file with its task's official metrics.

    Args:
        model: The fine-tuned model directory.
        input: Labelled data in the task's format (GLUE TSV, CSV/TSV/JSONL, CoNLL, SQuAD JSON, SWAG CSV).
        output: Also write the metrics here as JSON.
        titles: SQuAD: a text file of the article titles to evaluate on (one per line).
        text_column: Override the text column saved with the model.
        text_pair_column: Override the second-text column saved with the model.
        label_column: Override the label column saved with the model.
        max_length: Override the maximum length used in training.
        batch_size: Evaluation batch size.
        max_eval_examples: Evaluate only the first N examples.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
    """
    from bertforge.tasks.registry import saved_task_settings
    from bertforge.tokenizer import BertTokenizer
    from bertforge.training.finetune import _lines
    from bertforge.training.finetune_loop import EvalSet, evaluate, load_task_model

    if output is not None:
        check_output_file(output, inputs=(input,))
    net, task = load_task_model(model, text_column=text_column, text_pair_column=text_pair_column,
                                label_column=label_column)
    max_length = max_length or saved_task_settings(model).get("max_seq_length", 128)
    check_length("--max-length", max_length, net.config.max_position_embeddings, str(model))
    tokenizer = BertTokenizer.from_pretrained(model)
    examples = task.read(input, titles=_lines(titles)) if titles else task.read(input)
    examples = examples[:max_eval_examples] if max_eval_examples else examples
    if not examples:
        raise DataError(f"{input}: no examples to evaluate (only a header line?)")
    features = task.features(examples, tokenizer, max_seq_length=max_length)
    metrics = evaluate(net.to(resolve_device(device)), task, EvalSet(Path(input).stem, examples, features),
                       pad_id=tokenizer.pad_id, batch_size=batch_size, progress=True)
    metrics = {"examples": len(examples), **metrics}
    print(json.dumps(metrics, indent=2))
    if output is not None:
        write_text_atomic(output, json.dumps(metrics, indent=2) + "\n")
    return metrics
