"""Named network namespaces created without forking."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from supervisor import nsutil
from supervisor.errors import RuntimeFailure

pytestmark = pytest.mark.root


def test_create_list_delete(prefix: str) -> None:
    """A created namespace is its own nsfs mount that `ip netns` sees; deleting removes it."""
    name = f"{prefix}-ns"
    try:
        path = nsutil.create_netns(name)
        assert nsutil.netns_exists(name)
        assert [name] == nsutil.list_netns(prefix)
        host_ino = os.stat("/proc/self/ns/net").st_ino
        assert host_ino != os.stat(path).st_ino
        links = subprocess.run(
            ["ip", "-n", name, "-o", "link"], check=True, capture_output=True, text=True
        ).stdout
        assert ["lo"] == [line.split(": ")[1] for line in links.splitlines()]
        # the supervisor's own namespace did not change
        assert host_ino == os.stat(f"/proc/self/task/{os.getpid()}/ns/net").st_ino
    finally:
        nsutil.delete_netns(name)
    assert not nsutil.netns_exists(name)
    assert [] == nsutil.list_netns(prefix)


def test_create_twice_refused(prefix: str) -> None:
    """Creating a namespace whose name is taken is refused and leaves the first one intact."""
    name = f"{prefix}-dup"
    try:
        nsutil.create_netns(name)
        with pytest.raises(RuntimeFailure, match="exists already"):
            nsutil.create_netns(name)
        assert nsutil.netns_exists(name)
    finally:
        nsutil.delete_netns(name)


def _own_netns_ino() -> int:
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


def test_create_here_returns_the_thread(prefix: str) -> None:
    """create_netns_here runs `inside` in the new namespace and brings the thread back."""
    name = f"{prefix}-here"
    before = _own_netns_ino()
    try:
        path, inside = nsutil.create_netns_here(name, _own_netns_ino)
        assert (os.stat(path).st_ino, before) == (inside, _own_netns_ino())
        assert nsutil.netns_exists(name)
    finally:
        nsutil.delete_netns(name)


def test_create_here_failure_leaves_nothing(prefix: str) -> None:
    """When `inside` fails the namespace is unmounted and removed, and the thread is back."""
    name = f"{prefix}-fail"
    before = _own_netns_ino()

    def boom() -> None:
        raise RuntimeFailure("inside failed")

    try:
        with pytest.raises(RuntimeFailure, match="inside failed"):
            nsutil.create_netns_here(name, boom)
        assert (False, False, before) == (
            nsutil.netns_exists(name),
            nsutil.netns_path(name).exists(),
            _own_netns_ino(),
        )
    finally:
        nsutil.delete_netns(name)


def test_run_in_netns(prefix: str) -> None:
    """run_in_netns runs a function inside another namespace and returns the thread."""
    name = f"{prefix}-run"
    before = _own_netns_ino()
    try:
        path = nsutil.create_netns(name)
        fd = os.open(path, os.O_RDONLY)
        try:
            inside = nsutil.run_in_netns(fd, _own_netns_ino)
        finally:
            os.close(fd)
        assert (os.stat(path).st_ino, before) == (inside, _own_netns_ino())
    finally:
        nsutil.delete_netns(name)


def _wait_ready(spare: nsutil.SpareNetns[int], name: str) -> tuple[Path, int]:
    """Take the spare once it is made (the first take starts making it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        taken = spare.take(name)
        if taken is not None:
            return taken
        time.sleep(0.005)
    raise AssertionError("no spare namespace was made")


def test_spare_taken_and_named(prefix: str) -> None:
    """A spare is made ahead, named on take (prepared inside it), and the next one follows."""
    closed: list[int] = []
    spare = nsutil.SpareNetns(_own_netns_ino, closed.append)
    try:
        assert None is spare.take(f"{prefix}-s0")  # nothing made yet: the caller falls back
        path, inside = _wait_ready(spare, f"{prefix}-s1")
        assert os.stat(path).st_ino == inside
        assert nsutil.netns_exists(f"{prefix}-s1")
        _path2, inside2 = _wait_ready(spare, f"{prefix}-s2")
        assert inside2 != inside
        assert [f"{prefix}-s1", f"{prefix}-s2"] == nsutil.list_netns(prefix)
    finally:
        spare.close()
        nsutil.delete_netns(f"{prefix}-s1")
        nsutil.delete_netns(f"{prefix}-s2")
    # the third spare (made after the second take) was dropped by close
    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert 1 == len(closed)


def test_spare_kept_when_name_taken(prefix: str) -> None:
    """Taking the spare under a name in use fails and keeps the spare for the next guest."""
    name = f"{prefix}-taken"
    spare = nsutil.SpareNetns(_own_netns_ino, lambda _: None)
    try:
        nsutil.create_netns(name)
        _path, first = _wait_ready(spare, f"{prefix}-a")
        deadline = time.monotonic() + 10
        while spare._ready is None and time.monotonic() < deadline:
            time.sleep(0.005)
        ready = spare._ready
        assert ready is not None
        with pytest.raises(RuntimeFailure, match="exists already"):
            spare.take(name)
        _path, second = _wait_ready(spare, f"{prefix}-b")
        assert (ready[1], True) == (second, second != first)
    finally:
        spare.close()
        for n in (name, f"{prefix}-a", f"{prefix}-b"):
            nsutil.delete_netns(n)
