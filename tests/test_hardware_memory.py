"""keep_freed_memory (hardware.py): after it, a large block the process frees stays in the process for the next
allocation instead of going back to the system, which is what spares a training step its page faults. Run in a
child process, so that the test process keeps glibc's defaults."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import sys
import torch
from bertforge.hardware import keep_freed_memory

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "keep":
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # once per process; a second call changes nothing
before = resident_mb()
block = torch.ones(64 * 2**20 // 4)  # 64 MB, written: every page resident
del block
print(resident_mb() - before)
"""


def _kept_mb(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return float(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_a_freed_block_stays_in_the_process_only_after_keep_freed_memory() -> None:
    import ctypes.util

    if "libc" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("no glibc")
    assert _kept_mb("default") < 8  # glibc unmapped the 64 MB block on free
    assert _kept_mb("keep") > 56  # kept for the next allocation

