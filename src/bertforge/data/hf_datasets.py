"""Inputs from Hugging Face's `datasets` library (optional: `pip install 'bertforge[data]'`).

Three ways in, all ending as the same plain records `data/tables.py` gives for a CSV file:
- a `datasets.Dataset` object handed to the Python API;
- a folder written by `Dataset.save_to_disk` (one split; a `DatasetDict` folder holds one sub-folder per split);
- a Hub name, `--dataset glue:sst2` = `datasets.load_dataset("glue", "sst2")`: its `train` split trains and
  its `validation*` splits evaluate; `evaluate` and `predict` read the one split `--split` names.

Class labels come out as their names ("positive", "B-PER"), as a CSV file would hold them; the label -1
that the Hub uses for unlabelled test rows comes out as None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bertforge.errors import DataError, OptionError

INSTALL = "pip install 'bertforge[data]' (or: pip install datasets)"


def _library():
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading a Hugging Face dataset needs the `datasets` library: {INSTALL}") from None
    return datasets


def is_dataset(source: Any) -> bool:
    """A `datasets.Dataset` object (checked without importing the library when it is not loaded)."""
    return type(source).__name__ == "Dataset" and type(source).__module__.startswith("datasets")


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `save_to_disk`: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def load_saved(path: Path):
    """The Dataset in a `save_to_disk` folder; a DatasetDict folder must be given by one of its splits."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if is_saved_dataset(p))
        example = path / (splits[0] if splits else "train")
        raise DataError(f"{path}: holds a DatasetDict with the splits {splits}; give one split's folder, "
                        f"e.g. {example}")
    return _library().load_from_disk(str(path))


def describe(dataset) -> str:
    """A name for messages and evaluation sets: 'glue/sst2[validation]', or the split alone."""
    info = dataset.info
    name = "/".join(part for part in (info.dataset_name, info.config_name) if part and part != "default")
    split = str(dataset.split) if dataset.split is not None else "dataset"
    return f"{name}[{split}]" if name else split


def records(dataset, source: str) -> list[dict]:
    """Rows as dicts with `_line` = the row number (1-based), class labels replaced by their names."""
    label_columns = {name: _class_names(feature) for name, feature in dataset.features.items()}
    rows = []
    for number, row in enumerate(dataset, start=1):
        for column, names in label_columns.items():
            if names is not None:
                row[column] = _label_names(row[column], names, f"{source}:{number}", column)
        row["_line"] = number
        rows.append(row)
    return rows


def _class_names(feature) -> list[str] | None:
    """The names of a ClassLabel column, or of a sequence of ClassLabels (token tags); else None."""
    datasets = _library()
    inner = feature.feature if hasattr(feature, "feature") else feature[0] if isinstance(feature, list) else feature
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def _label_names(value, names: list[str], source: str, column: str):
    if isinstance(value, list):
        return [_label_names(v, names, source, column) for v in value]
    if value is None or value == -1:  # the Hub's "no label" (GLUE test splits)
        return None
    if not 0 <= value < len(names):
        raise DataError(f"{source}: {column!r} is {value}, outside the {len(names)} class labels {names}")
    return names[value]


def load_hub(spec: str) -> tuple[Any, list[Any]]:
    """`name[:config]` -> (train split, validation splits) through `datasets.load_dataset`.

    The validation splits are those whose names start with "validation" (MNLI has validation_matched and
    validation_mismatched); test splits are left alone, as the Hub's are often unlabelled."""
    splits = _load_from_hub(spec)
    if "train" not in splits:
        raise DataError(f"--dataset {spec}: no 'train' split (splits: {list(splits)})")
    validation = [splits[s] for s in sorted(splits) if s.startswith("validation")]
    return splits["train"], validation


def load_hub_split(spec: str, split: str) -> Any:
    """One split of the Hub dataset `name[:config]` (what `evaluate` and `predict` read with --split)."""
    splits = _load_from_hub(spec)
    if split not in splits:
        raise DataError(f"--dataset {spec}: no split {split!r}; choose one of {sorted(splits)} with --split")
    return splits[split]


def _load_from_hub(spec: str):
    """Every split of `name[:config]` (a DatasetDict); the Hub's cache makes a second call cheap."""
    name, _, config = spec.partition(":")
    if not name:
        raise DataError(f"--dataset {spec!r}: expected a Hub name such as glue:sst2, conll2003 or squad")
    library = _library()
    try:
        return library.load_dataset(name, config or None)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        raise DataError(f"--dataset {spec}: could not load it from the Hugging Face Hub ({exc}); check the "
                        "name and config (name:config), the network, or save it with save_to_disk and give "
                        "that folder instead of --dataset") from None


def input_or_dataset(input: Any, dataset: str | None, split: str) -> Any:
    """The one data source of a job that reads one (`evaluate`, `predict`): --input (a file, a `save_to_disk`
    folder or, from Python, a `datasets.Dataset`) or the --split of the Hub dataset --dataset."""
    if (input is None) == (dataset is None):
        given = "both" if input is not None else "neither"
        raise OptionError(f"--input or --dataset: give one of them ({given} given): a file or save_to_disk "
                          "folder to --input, or a Hub name such as glue:sst2 to --dataset (with --split)")
    return input if dataset is None else load_hub_split(dataset, split)
