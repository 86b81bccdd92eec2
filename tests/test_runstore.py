"""Run records: written atomically, directories made on demand, read back whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from supervisor.errors import RuntimeFailure
from supervisor.store import RunStore


def test_first_write_makes_the_directories(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write("domains", "web1", {"init_pid": 7})
    assert store.read_all("domains") == {"web1": {"init_pid": 7}}
    assert (tmp_path / "run" / "networks").is_dir()
    assert oct((tmp_path / "run").stat().st_mode & 0o777) == "0o700"


def test_a_run_dir_removed_under_the_store_is_made_again(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write("domains", "web1", {"init_pid": 7})
    shutil.rmtree(tmp_path / "run")
    store.write("networks", "nat", {"bridge": "vsvbr0"})
    assert store.read_all("networks") == {"nat": {"bridge": "vsvbr0"}}
    assert store.read_all("domains") == {}


def test_a_write_failing_for_another_reason_names_the_path(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write("domains", "web1", {"init_pid": 7})
    shutil.rmtree(tmp_path / "run" / "domains")
    (tmp_path / "run" / "domains").write_text("not a directory")
    with pytest.raises(RuntimeFailure, match=r"domains/web1\.json: cannot write: Not a directory"):
        store.write("domains", "web1", {"init_pid": 8})
    assert (tmp_path / "run" / "domains").read_text() == "not a directory"
