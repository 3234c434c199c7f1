"""Downstream task families (BERT §4): one module each with its reader, features, loss, metric and
post-processing. `family(name)` maps a task name (`sst2`, `ner`, `squad`, `swag`, `classification`, ...)
to the object the fine-tuning loop drives."""

from bertforge.tasks.base import Feature, TaskFamily, family

__all__ = ["Feature", "TaskFamily", "family"]
