"""The pipeline sub-commands: `bertforge fill-mask | classify | ner | qa`.

Each reads texts from `--text` (one text or a JSON list) or a file, runs the pipeline and prints a JSON list (or writes
JSON lines to `--output`), one result per input, in input order.
"""

from __future__ import annotations

import json
from pathlib import Path

from bertforge.errors import OptionError
from bertforge.files import check_output_file
from bertforge.inference import pipelines
from bertforge.options import check_length
from bertforge.precision import InferencePrecision
from bertforge.tasks.classification import LongText


def _listed(value: list[str] | str | None) -> list[str] | None:
    return [value] if isinstance(value, str) else value


def _texts(text: list[str] | str | None, input: Path | None, text_column: str | None) -> list[str]:
    from bertforge.data.tables import read_texts

    if (text is None) == (input is None):
        raise OptionError("give the texts with --text (a text or a JSON list) or a file with --input, not both")
    return _listed(text) if text is not None else read_texts(input, text_column=text_column)


def _check_output(output: Path | None, input: Path | None) -> None:
    """Before any model is loaded: the output can be written and is not the input."""
    if output is not None:
        check_output_file(output, inputs=(input,))


def _load(model: str, device: str, task: str, precision: InferencePrecision,
          *, max_length: int | None = None) -> pipelines.Loaded:
    """The model's pipeline, after checking from its config.json alone that it has the head `task` needs;
    a --max-length beyond the model's position table is refused before the pipeline runs."""
    from bertforge.checkpoint import read_config
    from bertforge.pretrained import resolve_model

    directory = resolve_model(model)
    architecture = (read_config(directory).get("architectures") or ["BertModel"])[0]
    serving = [name for name, (_, tasks) in pipelines.TASKS.items() if task in tasks]
    if task not in pipelines.TASKS.get(architecture, (None, ()))[1]:
        raise OptionError(f"{task} --model {model}: this model is a {architecture}, without the head {task} needs; "
                          f"give a {' or '.join(serving)} checkpoint")
    loaded = pipelines.load_pipeline(directory, device=device, precision=precision)
    check_length("--max-length", max_length, loaded.predictor.model.config.max_position_embeddings, model)
    return loaded


def _emit(results: list, output: Path | None) -> list:
    if output is None:
        print(json.dumps(results, indent=1, ensure_ascii=False))
    else:
        from bertforge.files import write_text_atomic

        write_text_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
        print(f"wrote {len(results)} results to {output}")
    return results


def fill_mask(model: str, text: list[str] | str | None = None, input: Path | None = None,
              text_column: str | None = None, top_k: int = 5, output: Path | None = None,
              device: str = "auto", precision: InferencePrecision = "fp32") -> list:
    """Predict the tokens behind every [MASK] (a pre-training or masked-LM checkpoint).

    Args:
        model: Model directory (BertForPreTraining or BertForMaskedLM).
        text: A text with one or more [MASK] tokens, or a JSON list of texts.
        input: Or a file: .txt (one text per line) or .csv/.tsv/.jsonl with --text-column.
        text_column: The text column of a table input.
        top_k: Predictions per [MASK].
        output: Write JSON lines here instead of printing.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (a bf16 copy of the encoder; GPUs and CPUs with native bf16), fp16, int8 (CPU) or auto.
    """
    _check_output(output, input)
    loaded = _load(model, device, "fill-mask", precision)
    return _emit(pipelines.fill_mask(loaded.predictor, _texts(text, input, text_column), top_k=top_k), output)


def classify(model: str, text: list[str] | str | None = None, input: Path | None = None,
             text_column: str | None = None, max_length: int | None = None,
             long_text: LongText | None = None, stride: int | None = None,
             output: Path | None = None, device: str = "auto", precision: InferencePrecision = "fp32") -> list:
    """Label texts with a sequence-classification checkpoint (labels and probabilities).

    Args:
        model: Model directory (BertForSequenceClassification).
        text: A text to classify, or a JSON list of texts.
        input: Or a file: .txt (one text per line) or .csv/.tsv/.jsonl with --text-column.
        text_column: The text column of a table input.
        max_length: Tokens per input (or window); default: the model's fine-tuning --max-length (saved in its
            config.json), else the model's limit.
        long_text: truncate longer texts, or read them in sliding_window chunks whose logits are averaged;
            default: the model's fine-tuning --long-text, else truncate.
        stride: sliding_window: tokens between the starts of successive windows; default: the model's
            fine-tuning --stride, else half a window.
        output: Write JSON lines here instead of printing.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (a bf16 copy of the encoder; GPUs and CPUs with native bf16), fp16, int8 (CPU) or auto.
    """
    _check_output(output, input)
    loaded = _load(model, device, "classify", precision, max_length=max_length)
    return _emit(pipelines.classify(loaded.predictor, _texts(text, input, text_column), max_length=max_length,
                                    long_text=long_text, stride=stride), output)


def ner(model: str, text: list[str] | str | None = None, input: Path | None = None,
        text_column: str | None = None, max_length: int | None = None, output: Path | None = None,
        device: str = "auto", precision: InferencePrecision = "fp32") -> list:
    """Find entities (type, text, character span, score) with a token-classification checkpoint.

    Args:
        model: Model directory (BertForTokenClassification with BIO labels).
        text: A text, or a JSON list of texts.
        input: Or a file: .txt (one text per line) or .csv/.tsv/.jsonl with --text-column.
        text_column: The text column of a table input.
        max_length: Tokens per window; a longer text is split between words into several windows. Default:
            the model's fine-tuning --max-length (saved in its config.json), else the model's limit.
        output: Write JSON lines here instead of printing.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (a bf16 copy of the encoder; GPUs and CPUs with native bf16), fp16, int8 (CPU) or auto.
    """
    _check_output(output, input)
    loaded = _load(model, device, "ner", precision, max_length=max_length)
    return _emit(pipelines.ner(loaded.predictor, _texts(text, input, text_column), max_length=max_length), output)


def qa(model: str, question: list[str] | str | None = None, context: list[str] | str | None = None,
       input: Path | None = None, max_length: int | None = None, stride: int | None = None,
       max_answer_length: int | None = None, output: Path | None = None, device: str = "auto",
       precision: InferencePrecision = "fp32") -> list:
    """Extract answers from contexts (any length: overlapping windows) with a question-answering checkpoint,
    decoded as `evaluate` and `predict` do (n-best start + end logits, max-context windows).

    Args:
        model: Model directory (BertForQuestionAnswering).
        question: A question, or a JSON list of questions paired with a list of --context.
        context: The passage to answer from.
        input: Or a .csv/.tsv/.jsonl file with question and context columns.
        max_length: Tokens per window (question + context piece + 3 special tokens); default: the model's
            fine-tuning --max-length (saved in its config.json), else 384.
        stride: Tokens between the starts of consecutive windows (the step, as finetune's --stride;
            transformers' stride is the overlap instead: window length minus this); default: the model's
            fine-tuning --stride, else 128.
        max_answer_length: Longest answer considered, in tokens; default: the model's fine-tuning
            --max-answer-length, else 30.
        output: Write JSON lines here instead of printing.
        device: auto (a GPU if there is one), cpu, cuda, cuda:1, mps, ...
        precision: fp32, bf16 (a bf16 copy of the encoder; GPUs and CPUs with native bf16), fp16, int8 (CPU) or auto.
    """
    from bertforge.data.tables import read_records

    _check_output(output, input)
    if input is not None:
        rows = read_records(input, required=("question", "context"))
        question, context = [r["question"] for r in rows], [r["context"] for r in rows]
    question, context = _listed(question), _listed(context)
    if not question or not context or len(question) != len(context):
        raise OptionError("give as many --question as --context (or --input with question/context columns)")
    loaded = _load(model, device, "qa", precision, max_length=max_length)
    return _emit(pipelines.qa(loaded.predictor, question, context, max_length=max_length, stride=stride,
                              max_answer_length=max_answer_length), output)
