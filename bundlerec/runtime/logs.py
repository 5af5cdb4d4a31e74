"""Structured logging: one JSON object per line on stderr (or plain text for humans).

Log calls pass fields with `extra={"fields": {...}}`; they become top-level keys.
Never log raw user ids, titles of what a user viewed, or request payloads.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from bundlerec.runtime.tracing import log_fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(log_fields())  # request_id and trace_id of the call being handled, when tracing is on
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Quiet libraries that log every statement or connection at INFO.
    for noisy in ("sqlalchemy.engine", "alembic", "aiosqlite"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
