"""Task names -> task families, and the config.json entry a fine-tuned model keeps its family's settings in.

Kept apart from `tasks/base.py` so that the families can import the shared pieces there without base.py
importing them back."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from bertforge.data.tables import DataError
from bertforge.tasks.base import TaskFamily
from bertforge.tasks.classification import GLUE_TASKS, SequenceClassification
from bertforge.tasks.multiple_choice import MultipleChoice
from bertforge.tasks.ner import TokenClassification
from bertforge.tasks.qa import QuestionAnswering

TASK_CONFIG_KEY = "bertforge_task"  # config.json field holding the task family's settings (`family.settings()`)

# Spellings of each family's name, compared without dashes and underscores, in lower case.
_NAMES: dict[type, tuple[str, ...]] = {
    SequenceClassification: (*GLUE_TASKS, "classification", "regression", "multilabel"),
    TokenClassification: ("ner", "conll", "conll2003", "tokenclassification"),
    QuestionAnswering: ("squad", "squadv1", "squadv11", "squadv2", "squadv20", "qa"),
    MultipleChoice: ("swag", "multiplechoice"),
}
_SHOWN = [*GLUE_TASKS, "classification", "regression", "multilabel", "ner", "squad", "squad_v2", "swag"]


def saved_task_settings(directory: str | Path) -> dict:
    """The settings a model folder was fine-tuned with, as `finetune` saves them in its config.json: the family's
    `settings()` (task name, doc_stride, max_answer_length, ...) plus max_seq_length; {} for a model saved
    otherwise. Every job that uses a fine-tuned model takes these as its defaults, so reading them lives here."""
    from bertforge.checkpoint import read_config

    return dict(read_config(directory).get(TASK_CONFIG_KEY) or {})


def task_max_length(saved: Mapping, max_length: int | None = None, *, default: int) -> int:
    """Tokens per feature for a task model: an explicit `max_length` wins, then the max_seq_length the model was
    fine-tuned with (`saved` = its `saved_task_settings`), then `default` — the model sees inputs cut as in
    fine-tuning unless asked otherwise."""
    return max_length or saved.get("max_seq_length") or default


def family(name: str, **settings) -> TaskFamily:
    """The task family for a task name. `settings` are options (columns, doc_stride, ...); each family
    takes those its constructor names and ignores the rest, so one CLI can carry all of them."""
    cls = family_class(name)
    accepted = inspect.signature(cls.__init__).parameters
    chosen = {k: v for k, v in settings.items() if k in accepted and v is not None}
    return cls(name, **chosen)


def family_class(name: str) -> type:
    key = name.lower().replace("-", "").replace("_", "")
    for cls, names in _NAMES.items():
        if key in names:
            return cls
    raise DataError(f"unknown task {name!r}; choose one of {', '.join(_SHOWN)}")


def family_for(model: nn.Module, saved: Mapping | None = None, **settings) -> TaskFamily:
    """The family that decodes a task model's outputs, its labels taken from the model (id2label), for the
    pipelines and the HTTP service. `saved` is the model folder's `saved_task_settings` ({} for a checkpoint
    from elsewhere); `settings` (as for `family`) override them, except those left at None. A saved `task`
    names the variant (squad_v2) when it belongs to the model's family."""
    for cls in _NAMES:
        if isinstance(model, cls.model_class):
            break
    else:
        raise DataError(f"{type(model).__name__} has no task family; a task model from heads.py is needed")
    name = _NAMES[cls][0]
    settings = {**(saved or {}), **{k: v for k, v in settings.items() if v is not None}}
    saved_name = settings.pop("task", None)
    if saved_name is not None and family_class(saved_name) is cls:
        name = saved_name
    elif cls is SequenceClassification:
        name = ("multilabel" if model.problem_type == "multi_label_classification"
                else "regression" if model.num_labels == 1 else "classification")
    labels = getattr(model, "labels", None)
    if labels is None and getattr(model, "num_labels", 1) > 1:
        labels = [f"LABEL_{i}" for i in range(model.num_labels)]
    return family(name, **{"labels": labels, **settings})
