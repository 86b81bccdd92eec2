"""Service integration: sd_notify datagrams and JSON logs with the API's extra fields."""

from __future__ import annotations

import io
import json
import logging
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.logging_setup import setup_logging
from supervisor.sdnotify import notify
from tests.fake_supervisor import short_tmpdir


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = short_tmpdir()
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_notify_sends_to_notify_socket(sockdir: Path) -> None:
    """With NOTIFY_SOCKET set, READY=1 arrives as one datagram; without it nothing is sent."""
    path = str(sockdir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        assert True is notify("READY=1\nSTATUS=serving", environ={"NOTIFY_SOCKET": path})
        assert b"READY=1\nSTATUS=serving" == listener.recv(1024)
    assert False is notify("READY=1", environ={})


def test_notify_abstract_socket() -> None:
    """An '@' address is the abstract namespace."""
    name = "vsvt-notify-test"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert True is notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert b"STOPPING=1" == listener.recv(1024)


def test_json_logs_carry_extra_fields() -> None:
    """JSON log lines hold the message and the extra fields (the peer of a mutation)."""
    out = io.StringIO()
    level = logging.getLogger().level
    handler = setup_logging(logging.INFO, fmt="json", stream=out)
    try:
        logging.getLogger("supervisor.api").info(
            "api mutation POST /v1/domains", extra={"peer_uid": 0, "peer_pid": 42}
        )
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    record = json.loads(out.getvalue().splitlines()[-1])
    assert ("api mutation POST /v1/domains", 0, 42, "info") == (
        record["message"],
        record["peer_uid"],
        record["peer_pid"],
        record["level"],
    )
