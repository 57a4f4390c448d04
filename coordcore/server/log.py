"""Structured logs for the server: one line per event, ``key=value`` or JSON.

Built on :mod:`logging` (logger ``coordcore.server``) so applications can route it;
:func:`configure` installs a stderr handler with the chosen format.

>>> import io, logging
>>> stream = io.StringIO()
>>> log = configure("kv", "info", stream=stream, name="coordcore.doctest")
>>> log.info("listening", port=7379, host="127.0.0.1")
>>> line = stream.getvalue()
>>> "level=info" in line and 'event=listening' in line and "port=7379" in line
True
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["StructLog", "configure"]


class StructLog:
    """``log.info("event", key=value, ...)``: an event name plus fields."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, event, extra={"cc_fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=True)


def _kv_value(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str) -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "cc_fields", {}))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())


def configure(fmt: str = "kv", level: str = "info", *, stream: TextIO | None = None,
              name: str = "coordcore.server") -> StructLog:
    """A StructLog writing ``fmt`` ("kv" or "json") lines at ``level`` to stderr (or stream)."""
    if fmt not in ("kv", "json"):
        raise ValueError(f"log format must be 'kv' or 'json', not {fmt!r}")
    logger = logging.getLogger(name)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    if name == "coordcore.server":
        # The library's own loggers (coordcore.locks.*: recovery, session expiry, slow
        # fsyncs) write through the same handler, at the same level.
        lib = logging.getLogger("coordcore")
        lib.handlers = [h for h in lib.handlers if not getattr(h, "_coordcore", False)]
        handler._coordcore = True  # type: ignore[attr-defined]
        lib.addHandler(handler)
        lib.setLevel(level.upper())
    return StructLog(logger)
