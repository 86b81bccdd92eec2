"""The busybox guest root: built complete, atomically, and idempotently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.errors import RuntimeFailure
from supervisor.guest.rootfs import prepare_busybox_root


def test_builds_expected_layout(tmp_path: Path) -> None:
    """A fresh build has busybox, applet links, passwd/group and the udhcpc script."""
    root = str(tmp_path / "bb")
    assert root == prepare_busybox_root(root)
    assert "busybox" == os.readlink(os.path.join(root, "bin", "sh"))
    assert "../bin/busybox" == os.readlink(os.path.join(root, "sbin", "reboot"))
    with open(os.path.join(root, "etc", "passwd")) as f:
        assert "root:x:0:0:root:/root:/bin/sh" == f.readline().strip()
    script = os.path.join(root, "usr", "share", "udhcpc", "default.script")
    assert 0o755 == os.stat(script).st_mode & 0o777
    expected_dirs = {"proc", "dev", "sys", "tmp", "root", "etc", "bin", "sbin", "var"}
    assert expected_dirs <= set(os.listdir(root))
    assert [] == [n for n in os.listdir(tmp_path) if n.startswith(".vsv-rootfs-")]


def test_idempotent_keeps_existing(tmp_path: Path) -> None:
    """A second call keeps the existing root untouched (a marker file survives)."""
    root = str(tmp_path / "bb")
    prepare_busybox_root(root)
    marker = os.path.join(root, "etc", "marker")
    Path(marker).write_text("kept")
    prepare_busybox_root(root)
    assert "kept" == Path(marker).read_text()


def test_missing_busybox_is_clear_error(tmp_path: Path) -> None:
    """Without the busybox binary the error names it and nothing is created."""
    root = str(tmp_path / "bb")
    with pytest.raises(RuntimeFailure, match="busybox-static"):
        prepare_busybox_root(root, busybox=str(tmp_path / "nope"))
    assert [] == os.listdir(tmp_path)


def test_owner_gives_the_root_to_a_mapped_range(tmp_path: Path) -> None:
    """--owner: every file moves to the range, keeping its offset; setuid bits survive."""
    root = str(tmp_path / "bb")
    prepare_busybox_root(root, owner=(100000, 200000))
    for rel in ("", "bin/busybox", "etc/passwd", "root", "bin/sh"):
        st = os.lstat(os.path.join(root, rel))
        assert (100000, 200000) == (st.st_uid, st.st_gid)
    os.chown(os.path.join(root, "etc", "passwd"), 100033, 200033)
    os.chmod(os.path.join(root, "bin", "busybox"), 0o4755)
    prepare_busybox_root(root, owner=(300000, 300000))  # an existing root moves over
    st = os.lstat(os.path.join(root, "etc", "passwd"))
    assert (300033, 300033) == (st.st_uid, st.st_gid)
    assert 0o4755 == os.stat(os.path.join(root, "bin", "busybox")).st_mode & 0o7777
    prepare_busybox_root(root, owner=(300000, 300000))  # already there: nothing changes
    assert (300000, 300000) == (os.lstat(root).st_uid, os.lstat(root).st_gid)
