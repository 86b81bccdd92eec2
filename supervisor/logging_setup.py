"""Logging for the daemon: human lines by default, one JSON object per line on request.

JSON logs (``vsv daemon --log-format json``) carry the standard fields (``time``, ``level``,
``logger``, ``message``) plus every ``extra=`` field a call passed, e.g. the API's
``peer_uid``/``peer_pid`` on each mutation, so a log collector can filter on them.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

#: attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def setup_logging(
    level: int | str = logging.INFO, *, fmt: LogFormat = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones from this function)."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name("vsv")
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "vsv"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
