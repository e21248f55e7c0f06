"""master/spec.py: a child keeps exactly the descriptors its spec names."""

from __future__ import annotations

import os

from prefork_lb.master.spec import STDIO, UpgradeSpec, close_inherited, zone_descriptors
from prefork_lb.zone.zone import Zone


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_close_inherited_keeps_only_the_named_descriptors() -> None:
    kept_r, kept_w = os.pipe()
    other_r, other_w = os.pipe()
    report_r, report_w = os.pipe()
    probe = (kept_r, kept_w, other_r, other_w, report_r)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports which probes are still open
        code = 1
        try:
            close_inherited(STDIO | {kept_w, report_w})
            os.write(report_w, bytes(_is_open(fd) for fd in probe))
            code = 0
        finally:
            os._exit(code)
    os.close(report_w)
    seen = os.read(report_r, 64)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(seen) == [0, 1, 0, 0, 0]  # only kept_w (and the report pipe) survived
    for fd in probe:
        os.close(fd)


def test_zone_descriptors_are_the_memfd_and_the_mapping_not_the_lock() -> None:
    zone = Zone.create()
    zone.lock()  # opens this process's lock descriptor on the same memfd
    zone.unlock()
    fds = zone_descriptors(zone)
    assert zone.fd in fds and zone._lock_fd not in fds and len(fds) == 2  # memfd + mmap's dup
    zone.close()


def test_upgrade_spec_names_zone_and_listeners() -> None:
    spec = UpgradeSpec(7, (9, 10))
    assert spec.env_value() == "zone=7;sockets=9,10"
    assert spec.keep_fds() == frozenset({0, 1, 2, 7, 9, 10})
