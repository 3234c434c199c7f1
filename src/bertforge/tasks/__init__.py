"""Downstream task families (BERT §4): one module each with its reader, features, loss, metric and the
decoding of model outputs into answers, shared by training, evaluate, predict, the pipelines and the HTTP
service. `family(name)` maps a task name (`sst2`, `ner`, `squad`, `swag`, `classification`, ...) to the
object the fine-tuning loop drives."""

from bertforge.tasks.base import Feature, TaskFamily
from bertforge.tasks.registry import TASK_CONFIG_KEY, family

__all__ = ["TASK_CONFIG_KEY", "Feature", "TaskFamily", "family"]
