"""Opening and handing over log files (prefork_lb.log): no symlink, hard link or FIFO is ever
written through, and only files prefork-lb creates are chowned to the worker user."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from prefork_lb.http.accesslog import AccessLogWriter
from prefork_lb.log import ReopenableFileHandler, open_log_file, prepare_log_files

ROOT = os.geteuid() == 0
WORKER_UID, WORKER_GID = 65534, 65534  # nobody/nogroup: any uid that is not ours


def test_open_refuses_a_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    """Catches log files opened without O_NOFOLLOW (a planted symlink appended to as root)."""
    target = tmp_path / "secret"
    target.write_text("keep\n")
    link = tmp_path / "access.log"
    link.symlink_to(target)
    with pytest.raises(OSError) as info:
        open_log_file(str(link))
    assert info.value.errno == errno.ELOOP and info.value.filename == str(link)
    with pytest.raises(OSError):
        AccessLogWriter(str(link))  # the workers' access-log writer opens the same way
    with pytest.raises(OSError):
        ReopenableFileHandler(str(link))  # and so does the error log
    assert target.read_text() == "keep\n"


def test_open_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """Catches a FIFO planted as a log file (an open for writing would block or feed a reader)."""
    fifo = tmp_path / "access.log"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as info:
        open_log_file(str(fifo))
    assert info.value.errno in (errno.ENXIO, errno.EINVAL)


def test_open_refuses_a_hard_link(tmp_path: Path) -> None:
    """Catches a hard link to another file planted as a log file (O_NOFOLLOW cannot see it)."""
    target = tmp_path / "secret"
    target.write_text("keep\n")
    os.link(target, tmp_path / "access.log")
    with pytest.raises(OSError) as info:
        open_log_file(str(tmp_path / "access.log"))
    assert "hard links" in str(info.value)
    assert target.read_text() == "keep\n"


def test_open_creates_appends_and_accepts_dev_null(tmp_path: Path) -> None:
    path = tmp_path / "new.log"
    fd = open_log_file(str(path))
    try:
        os.write(fd, b"one\n")
    finally:
        os.close(fd)
    assert path.read_text() == "one\n" and (path.stat().st_mode & 0o777) == 0o644
    os.close(open_log_file(os.devnull))


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_prepare_chowns_only_files_it_creates(tmp_path: Path) -> None:
    """Catches the master chowning whatever sits at a log path: a pre-existing file owned by
    another uid must keep its owner (with a warning), a missing one is created for the worker."""
    existing = tmp_path / "existing.log"
    existing.write_text("")
    os.chown(existing, 4242, 4242)
    missing = tmp_path / "missing.log"
    warnings = prepare_log_files([str(existing), str(missing), "stderr"], WORKER_UID, WORKER_GID)
    assert (existing.stat().st_uid, existing.stat().st_gid) == (4242, 4242)
    assert (missing.stat().st_uid, missing.stat().st_gid) == (WORKER_UID, WORKER_GID)
    assert len(warnings) == 1 and str(existing) in warnings[0] and "not chowned" in warnings[0]
    assert prepare_log_files([str(missing)], WORKER_UID, WORKER_GID) == []  # already the worker's


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_prepare_never_chowns_through_a_symlink(tmp_path: Path) -> None:
    """Catches chown through a symlink planted in a log directory (it handed the link's target,
    any root file, to the worker user)."""
    target = tmp_path / "shadow"
    target.write_text("root only\n")
    os.chmod(target, 0o600)
    link = tmp_path / "access.log"
    link.symlink_to(target)
    prepare_log_files([str(link)], WORKER_UID, WORKER_GID)
    assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (0, 0o600)
    assert link.is_symlink()
