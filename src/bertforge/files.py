"""Reading text files (plain or gzip) strictly, writing files and folders atomically, and the checks
every output path passes before any compute.

Atomic writes: the data goes to a temporary file in the same folder that is then renamed over the target
(`os.replace` is atomic on POSIX and Windows), so a crash mid-write never leaves a half-written file under
the final name. Folders (a prepared corpus, a fine-tuned model) are built in a temporary sibling folder and
moved into place when complete. Every temporary is named `.{target name}.{random}.tmp`; one left behind by
a killed process is removed by `remove_stale_temporaries` when the next run starts.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from bertforge.errors import DataError, OutputError

TEMP_SUFFIX = ".tmp"
# `.{name}.{8 random characters}.tmp`, as tempfile.mkstemp/mkdtemp name them with our prefix and suffix.
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
STALE_AFTER_S = 15 * 60  # a temporary untouched this long belongs to a process that died


# ----- reading ------------------------------------------------------------------------------------
class TextLines:
    """The lines of a UTF-8 text file (plain or .gz), decoded strictly.

    Bytes that are not UTF-8 or a damaged gzip stream stop the reading with a `DataError` naming the file,
    the line and the byte offset: replacing them silently would train or predict on garbage.
    Iterate it (lines keep their "\\n") or call `read()`; `tell()` is the position in the file on disk.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise DataError(f"{self.path}: is a folder; give a file")
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.raw: BinaryIO = self.path.open("rb")
        self.stream: BinaryIO = gzip.GzipFile(fileobj=self.raw) if self.path.suffix == ".gz" else self.raw
        self.line_no = 0
        self.offset = 0  # bytes of (decompressed) text read so far

    def tell(self) -> int:
        return self.raw.tell()

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                raw = self.stream.readline()
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise DataError(self._gzip_problem(exc)) from None
            if not raw:
                return
            self.line_no += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{self.path}:{self.line_no}: byte {self.offset + exc.start} (0x{raw[exc.start]:02x}) "
                                "is not UTF-8; convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
            if self.line_no == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not text
            self.offset += len(raw)
            yield line

    def read(self) -> str:
        return "".join(self)

    def _gzip_problem(self, exc: Exception) -> str:
        if isinstance(exc, EOFError):
            return (f"{self.path}: the gzip file is truncated (it ends after line {self.line_no}); "
                    "copy or download it again")
        return f"{self.path}: not a valid gzip file ({exc}); give a .gz made by gzip, or rename a plain-text file"

    def close(self) -> None:
        self.stream.close()
        self.raw.close()

    def __enter__(self) -> TextLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_text(path: str | Path) -> TextLines:
    """Open a UTF-8 text file for reading (strictly), transparently decompressing `.gz`."""
    return TextLines(path)


def check_text_file(path: str | Path, *, what: str = "file") -> Path:
    """An input text file that exists, is not a folder, is not empty and, if .gz, starts as gzip."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a {what}")
    if not path.is_file():
        raise DataError(f"{path}: no such {what}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the {what} is empty")
    if path.suffix == ".gz":
        with path.open("rb") as handle:
            magic = handle.read(2)
        if magic != b"\x1f\x8b":
            raise DataError(f"{path}: not a gzip file (it does not start with the gzip signature); "
                            "rename it without .gz if it is plain text")
    return path


# ----- writing ------------------------------------------------------------------------------------
def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result to `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes the file private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def temporary_sibling(path: str | Path) -> Path:
    """A new empty folder beside `path` (same file system, so it can be renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    folder.chmod(0o777 & ~_umask())  # mkdtemp makes it private (0700)
    return folder


def move_into_place(built: Path, target: Path, names: Sequence[str] | None = None) -> None:
    """Move the complete folder `built` to `target`. What is replaced is set aside first and deleted only
    once the new files are in place.

    With `names`, only those entries of `target` are replaced and the rest of it is left alone; the last
    name is the completion marker (e.g. meta.json): it is set aside first and moved in last, so a crash
    in between never pairs it with the wrong files. Without `names`, the whole of `target` is replaced.
    """
    built, target = Path(built), Path(target)
    if names is None:
        if not target.exists():
            os.replace(built, target)
            return
        aside = temporary_sibling(target)
        os.replace(target, aside)  # onto the empty folder just made: atomic on POSIX
        os.replace(built, target)
        shutil.rmtree(aside)
        return
    target.mkdir(parents=True, exist_ok=True)
    aside = built / ".replaced"
    aside.mkdir()
    for name in reversed(names):
        if (target / name).exists():
            os.replace(target / name, aside / name)
    for name in names:
        if (built / name).exists():
            os.replace(built / name, target / name)
    shutil.rmtree(built)


def remove_stale_temporaries(folder: str | Path, *, name: str | None = None,
                             older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete temporaries (files or folders named like ours) in `folder` untouched for `older_than_s`:
    the leftovers of a process killed mid-save. With `name`, only those of the target `name`."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for entry in folder.iterdir():
        if not _TEMP_NAME.match(entry.name) or (name is not None and not entry.name.startswith(f".{name}.")):
            continue
        try:
            if now - entry.lstat().st_mtime < older_than_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(entry)
    return removed


# ----- checks before compute -----------------------------------------------------------------------
def check_output_file(path: str | Path, *, option: str = "--output", inputs: Iterable[str | Path | None] = ()) -> Path:
    """An output file that can be written and is none of `inputs` (same file after resolving links; an input
    that is no path, such as a `datasets.Dataset`, cannot be overwritten)."""
    path = Path(path)
    for source in inputs:
        if isinstance(source, str | Path) and _same_path(path, Path(source)):
            raise OutputError(f"{option} {path}: is the input file; writing there would destroy it — "
                              "choose another output path")
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file path, e.g. {path / 'out'}")
    _check_writable_parent(path, option)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{option} {path}: the file is not writable; choose another path")
    return path


def check_output_dir(path: str | Path, *, option: str = "--output-dir") -> Path:
    """An output folder that is a folder (or can become one) and can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: is a file, not a folder; choose another path")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{option} {path}: the folder is not writable; choose another path")
        return path
    _check_writable_parent(path, option)
    return path


def _check_writable_parent(path: Path, option: str) -> None:
    """The nearest existing ancestor must be a writable folder (a file there blocks the path)."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, so no folder can be made there; "
                          "choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write in {ancestor} (permission denied); choose another path")


def _same_path(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies under it (after resolving links)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())
