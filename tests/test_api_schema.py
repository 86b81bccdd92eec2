"""Schemathesis against the OpenAPI document, over the real read-write Unix socket: no 5xx and
every answer matches the document (status, content type, body schema)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
import urllib3
from hypothesis import HealthCheck, settings
from requests.adapters import HTTPAdapter
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from supervisor.api.openapi import openapi_document
from tests.fake_supervisor import ServerThread, short_tmpdir

schema = schemathesis.openapi.from_dict(openapi_document())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__("localhost", **kwargs)
        self.unix_path = path

    def _new_conn(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self.unix_path)
        return sock


class _UnixPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.unix_path = path

    def _new_conn(self) -> _UnixConnection:
        return _UnixConnection(self.unix_path)


class UnixAdapter(HTTPAdapter):
    """requests over an AF_UNIX socket, whatever host the URL names."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.unix_path = path

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> _UnixPool:
        return _UnixPool(self.unix_path)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    d = short_tmpdir()
    server = ServerThread(d).start()
    s = requests.Session()
    s.mount("http://", UnixAdapter(server.rw))
    try:
        yield s
    finally:
        s.close()
        server.stop()
        shutil.rmtree(d, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_openapi(case: Any, session: requests.Session) -> None:
    """Generated requests never get a 5xx, and each answer matches the OpenAPI document."""
    if case.operation.path == "/v1/events":
        case.query = {**(case.query or {}), "follow": "false"}  # a followed stream never ends
    case.call_and_validate(session=session, base_url="http://localhost", checks=CHECKS)
