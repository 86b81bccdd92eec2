"""Named network namespaces created without forking."""

from __future__ import annotations

import os
import subprocess

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
