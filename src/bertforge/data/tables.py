"""Reading texts and records from what users have: .txt (one text per line), .csv, .tsv, .jsonl, .parquet,
and, with the `datasets` library, a `save_to_disk` folder or a `datasets.Dataset` (data/hf_datasets.py).

Errors name the file, the line (for .parquet and datasets: the row) and what to do; nothing is silently skipped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bertforge.data import hf_datasets
from bertforge.errors import DataError
from bertforge.files import open_text

__all__ = ["DataError", "is_table", "read_records", "read_texts", "source_name"]

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
# Python's csv module refuses fields over 128 KiB; a long document is fine, but a field that grows past
# this is almost always an unclosed quote swallowing the rest of the file.
MAX_FIELD_CHARS = 32 << 20
csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def source_name(source: str | Path | Any) -> str:
    """How messages name a data source: its path, or a Dataset's name and split."""
    return hf_datasets.describe(source) if hf_datasets.is_dataset(source) else str(source)


def is_table(source: str | Path | Any) -> bool:
    """A source `read_records` reads: a table file, a `save_to_disk` folder or a `datasets.Dataset`."""
    if hf_datasets.is_dataset(source):
        return True
    return _suffix(Path(source)) in TABLE_SUFFIXES or hf_datasets.is_saved_dataset(Path(source))


def read_records(path: str | Path | Any, *, required: tuple[str, ...] | Mapping[str, str] = ()) -> list[dict]:
    """Rows of a CSV/TSV (header line required), JSONL or Parquet file, a `save_to_disk` folder or a
    `datasets.Dataset`, as dicts with `_line` = the line number (Parquet and datasets: the row number).

    `required` columns must exist; a row missing one is an error naming the line. As a mapping
    {column: option}, the error names the option that chose the column (e.g. "--label-column").
    """
    if hf_datasets.is_dataset(path) or hf_datasets.is_saved_dataset(Path(path)):
        dataset = path if hf_datasets.is_dataset(path) else hf_datasets.load_saved(Path(path))
        _check_columns(source_name(path), list(dataset.column_names), required)
        return hf_datasets.records(dataset, source_name(path))
    path = Path(path)
    kind = _suffix(path)
    if kind == ".parquet":
        return _read_parquet(path, required)
    rows: list[dict] = []
    with open_text(path) as handle:
        if kind in (".csv", ".tsv"):
            reader = csv.DictReader(handle, delimiter="," if kind == ".csv" else "\t")
            try:
                if reader.fieldnames is None:
                    raise DataError(f"{path}: empty file; expected a header line with column names")
                reader.fieldnames = [name.lstrip("\ufeff").strip() for name in reader.fieldnames]
                _check_columns(path, reader.fieldnames, required)
                for row in reader:
                    row["_line"] = reader.line_num
                    rows.append(row)
            except csv.Error as exc:
                raise DataError(_csv_problem(path, reader.line_num, exc)) from None
        elif kind in (".jsonl", ".json"):
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{line_no}: invalid JSON ({exc.msg}); one JSON object per line") from exc
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
                missing = [c for c in required if c not in row]
                if missing:
                    option = required.get(missing[0]) if isinstance(required, Mapping) else None
                    fix = f" (choose one with {option})" if option else ""
                    raise DataError(f"{path}:{line_no}: no field {missing[0]!r}; fields are {sorted(row)}{fix}")
                row["_line"] = line_no
                rows.append(row)
        else:
            raise DataError(f"{path}: unknown table format {kind!r}; use .csv, .tsv, .jsonl or .parquet")
    return rows


def _read_parquet(path: Path, required: tuple[str, ...] | Mapping[str, str]) -> list[dict]:
    try:
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow: pip install 'bertforge[data]' "
                        "(or: pip install pyarrow)") from None
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        table = pyarrow.parquet.read_table(path)
    except pyarrow.ArrowException as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    _check_columns(path, table.column_names, required)
    rows = table.to_pylist()
    for number, row in enumerate(rows, start=1):
        row["_line"] = number
    return rows


def _check_columns(path: Path | str, columns: list[str], required: tuple[str, ...] | Mapping[str, str]) -> None:
    for column in required:
        if column not in columns:
            option = required.get(column) if isinstance(required, Mapping) else None
            fix = f" (choose one with {option})" if option else ""
            raise DataError(f"{path}: no column {column!r}; the columns are {columns}{fix}")


def _csv_problem(path: Path, line: int, exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return (f"{path}:{line}: a field longer than {csv.field_size_limit():,} characters; probably a quote (\") "
                "that is never closed — check the quoting near this line")
    return f"{path}:{line}: not valid CSV/TSV ({exc})"


def read_texts(path: str | Path, *, text_column: str | None = None) -> list[str]:
    """Texts from a .txt file (one per line, blank lines kept as empty texts) or a table column."""
    path = Path(path)
    if is_table(path):
        if not text_column:
            raise DataError(f"{path}: a table needs --text-column to say which column holds the text")
        texts = []
        for row in read_records(path, required={text_column: "--text-column"}):
            value = row[text_column]
            if value is not None and not isinstance(value, str):
                raise DataError(f"{path}:{row['_line']}: {text_column!r} is {type(value).__name__}, not text")
            texts.append(value or "")
        return texts
    with open_text(path) as handle:
        return [line.rstrip("\r\n") for line in handle]
