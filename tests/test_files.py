"""Strict text reading, atomic folder swaps, output-path checks and stale-temporary clean-up."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest

from bertforge.errors import DataError, OutputError
from bertforge.files import (
    check_output_dir,
    check_output_file,
    move_into_place,
    open_text,
    remove_stale_temporaries,
    temporary_sibling,
    write_text_atomic,
)


def test_lines_are_decoded_strictly_with_the_place_of_a_bad_byte(tmp_path: Path) -> None:
    plain = tmp_path / "a.txt"
    plain.write_bytes("\ufeffone\r\ntwo\n".encode())
    with open_text(plain) as handle:
        assert list(handle) == ["one\r\n", "two\n"]  # the byte-order mark is not text
    packed = tmp_path / "b.txt.gz"
    packed.write_bytes(gzip.compress(b"first line\nsecond \xc3( line\n"))
    with pytest.raises(DataError, match=r"b.txt.gz:2: byte 18 \(0xc3\) is not UTF-8"):
        open_text(packed).read()


def test_damaged_gzip_missing_files_and_folders(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(b"line\n" * 10_000)[:-50])
    with pytest.raises(DataError, match="the gzip file is truncated"):
        open_text(cut).read()
    fake = tmp_path / "fake.gz"
    fake.write_text("not compressed\n")
    with pytest.raises(DataError, match="not a valid gzip file"):
        open_text(fake).read()
    with pytest.raises(DataError, match="is a folder; give a file"):
        open_text(tmp_path)
    with pytest.raises(DataError, match="gone.txt: no such file"):
        open_text(tmp_path / "gone.txt")


def test_named_entries_swap_in_with_the_marker_last(tmp_path: Path) -> None:
    target = tmp_path / "corpus"
    for split in ("train", "heldout"):
        write_text_atomic(target / split / "x", "old")
    write_text_atomic(target / "notes.md", "mine")
    write_text_atomic(target / "meta.json", "old")
    built = temporary_sibling(target)
    write_text_atomic(built / "train" / "x", "new")
    write_text_atomic(built / "meta.json", "new")
    move_into_place(built, target, ("train", "heldout", "meta.json"))
    assert sorted(p.name for p in target.iterdir()) == ["meta.json", "notes.md", "train"]
    assert (target / "train" / "x").read_text() == "new" and (target / "notes.md").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # nothing left aside


def test_a_whole_folder_is_replaced_only_when_the_new_one_is_complete(tmp_path: Path) -> None:
    target = tmp_path / "model"
    write_text_atomic(target / "config.json", "old")
    built = temporary_sibling(target)
    write_text_atomic(built / "config.json", "new")
    assert (target / "config.json").read_text() == "old"
    move_into_place(built, target)
    assert (target / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_output_checks(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nx\n")
    os.symlink(source, tmp_path / "alias.csv")
    with pytest.raises(OutputError, match="is the input file"):
        check_output_file(tmp_path / "alias.csv", inputs=(source,))
    assert check_output_file(tmp_path / "new" / "deeper" / "out.csv", inputs=(source,))  # parents get made
    with pytest.raises(OutputError, match="in.csv is a file, so no folder can be made there"):
        check_output_file(source / "out.csv")
    with pytest.raises(OutputError, match="--output-dir .*in.csv: is a file, not a folder"):
        check_output_dir(source)


def test_only_old_temporaries_of_our_naming_are_removed(tmp_path: Path) -> None:
    old = time.time() - 3600
    names = [".model.safetensors.a1b2c3d4.tmp", ".run.zz9_x8y7.tmp", ".other.q1w2e3r4.tmp", ".gitignore",
             "notes.tmp", ".fresh.pt.k9j8h7g6.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
        if name != ".fresh.pt.k9j8h7g6.tmp":
            os.utime(tmp_path / name, (old, old))
    (tmp_path / ".run.m5n6b7v8.tmp").mkdir()
    os.utime(tmp_path / ".run.m5n6b7v8.tmp", (old, old))
    removed = remove_stale_temporaries(tmp_path, name="run")
    assert sorted(p.name for p in removed) == [".run.m5n6b7v8.tmp", ".run.zz9_x8y7.tmp"]
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".model.safetensors.a1b2c3d4.tmp", ".other.q1w2e3r4.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fresh.pt.k9j8h7g6.tmp", ".gitignore", "notes.tmp"]
