"""File helpers: atomic writes and writability checks."""
import errno
import json
import os
import time

import pytest

import halp_trt.fileio as fileio
from halp_trt.errors import HalpError
from halp_trt.fileio import (STALE_TMP_S, check_writable, write_atomic_with, write_bytes_atomic,
                             write_json_atomic)


def test_writes_create_folders_and_replace_whole_files(tmp_path):
    path = tmp_path / "a" / "b" / "x.bin"
    write_bytes_atomic(str(path), b"one")
    write_bytes_atomic(str(path), b"two, longer")
    assert path.read_bytes() == b"two, longer"
    assert os.listdir(path.parent) == ["x.bin"]


def test_a_writer_that_fails_leaves_the_previous_file(tmp_path):
    path = tmp_path / "fig.png"
    write_bytes_atomic(str(path), b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError):
        write_atomic_with(str(path), half_then_fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["fig.png"]


def test_json_refuses_nan_instead_of_writing_invalid_json(tmp_path):
    with pytest.raises(ValueError):
        write_json_atomic(str(tmp_path / "t.json"), {"x": float("nan")})
    assert not (tmp_path / "t.json").exists()


def test_interrupted_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "t.json"
    write_json_atomic(str(path), {"version": "old"})

    def interrupt(_fd):  # the new content is written to the temporary file, not yet renamed
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(str(path), {"version": "new"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": "old"}
    assert os.listdir(tmp_path) == ["t.json"], "no temporary file is left behind"


def test_leftover_temporary_files_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "t.json"
    stale = tmp_path / ".tmp-t.json-abc.json"  # what kill -9 mid-write leaves behind
    fresh = tmp_path / ".tmp-t.json-def.json"  # maybe a writer still running: kept
    other = tmp_path / ".tmp-u.json-ghi.json"  # another file's: not ours to remove
    for p in (stale, fresh, other):
        p.write_text("{half")
    old = time.time() - 2 * STALE_TMP_S
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    write_json_atomic(str(target), {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [fresh.name, other.name, target.name])


def test_check_writable_fails_before_any_work(tmp_path):
    check_writable(str(tmp_path / "new" / "t.json"))
    assert (tmp_path / "new").is_dir() and os.listdir(tmp_path / "new") == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(HalpError, match="it is a file, not a folder"):
        check_writable(str(tmp_path / "file"), is_dir=True)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(HalpError, match="choose a writable location"):
            check_writable(str(ro / "t.json"))


@pytest.mark.parametrize("err, fragment", [
    (errno.ENOSPC, "free some space"), (errno.EROFS, "read-only"), (errno.EACCES, "permissions")])
def test_operating_system_refusals_are_one_clear_error_and_keep_the_old_file(
        tmp_path, monkeypatch, err, fragment):
    path = tmp_path / "table.json"
    write_bytes_atomic(str(path), b"complete save")

    def refuse(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(fileio.os, "fsync", refuse)
    with pytest.raises(HalpError, match=fragment) as info:
        write_json_atomic(str(path), {"x": 1})
    assert str(path) in str(info.value) and "rerun resumes" in str(info.value)
    assert path.read_bytes() == b"complete save" and os.listdir(tmp_path) == ["table.json"]


def test_a_folder_that_cannot_be_created_is_named(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(fileio.os, "makedirs", refuse)
    with pytest.raises(HalpError, match=r"cannot create the folder .*new.*Permission denied"):
        write_bytes_atomic(str(tmp_path / "new" / "x.bin"), b"x")


def test_build_table_on_a_full_disk_exits_cleanly(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from halp_trt.cli import main

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fileio.os, "fsync", full)
    out = tmp_path / "t.json"
    res = CliRunner().invoke(main, ["build-table", "tiny_models:tiny_resnet", "--input-shape",
                                    "1,3,16,16", "--out", str(out), "--rounds", "2"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "No space left on device" in res.output and str(out) in res.output
    assert not isinstance(res.exception, OSError)
