"""The errors bertforge raises for bad input, and the one line the CLI prints for each.

A user-caused problem (a missing file, a bad option, a truncated checkpoint, a full disk) is reported as
one line naming the file, the line or the option, and the fix; a traceback means a bug in bertforge.
"""

from __future__ import annotations

import errno


class BertforgeError(Exception):
    """Bad input or state, with a message that names the file, the line and the fix."""


class DataError(BertforgeError, ValueError):
    """Input data that cannot be used as given (also importable as `bertforge.data.tables.DataError`)."""


class OptionError(BertforgeError, ValueError):
    """An option value that cannot work (a negative batch size, an unknown device, a layer out of range)."""


class OutputError(BertforgeError, ValueError):
    """An output that cannot or must not be written (it is the input, a folder, or holds an earlier run)."""


_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and run again (finished files were left intact)",
    errno.EDQUOT: "the disk quota is used up; free some space and run again (finished files were left intact)",
    errno.EACCES: "permission denied; choose a path you can write to, or change its permissions",
    errno.EPERM: "operation not permitted; choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.EISDIR: "is a folder; give a file path",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the file name is too long",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path it concerns and what to do, without Python's noise."""
    where = exc.filename if exc.filename is not None else None
    if exc.errno in _OS_HINTS:
        what = _OS_HINTS[exc.errno]
    else:
        what = exc.strerror or str(exc)
    if where is None:
        # an OSError raised with only a message (e.g. FileNotFoundError("x: no such file")) says it all
        return str(exc) if exc.strerror is None else what
    return f"{where}: {what}"
