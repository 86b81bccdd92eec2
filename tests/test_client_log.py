"""`vsv log --follow` against a log that grows and that the daemon cuts back meanwhile."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from supervisor.api.client import Client
from supervisor.clientcli import _log


class _Info:
    """Answers the one request `vsv log` makes: the domain's info, with its log path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get_json(self, url: str) -> dict[str, Any]:
        assert url == "/v1/domains/g"
        return {"name": "g", "log": str(self.path)}


def test_follow_continues_after_the_log_was_cut_back(
    tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    log = tmp_path / "g.log"
    log.write_bytes(b"one\ntwo\n")

    def guest_and_daemon() -> None:
        time.sleep(0.4)
        with log.open("ab") as f:
            f.write(b"three\n")
        time.sleep(0.4)
        log.write_bytes(b"")  # the daemon's cut-back empties it...
        with log.open("ab") as f:
            f.write(b"four\n")  # ...and the guest goes on writing at its start

    writer = threading.Thread(target=guest_and_daemon)
    writer.start()
    args = argparse.Namespace(domain="g", lines=1, follow=True, timeout=1.6)
    assert _log(args, cast(Client, _Info(log))) == 0
    writer.join()
    assert capfdbinary.readouterr().out == b"two\nthree\nfour\n"
