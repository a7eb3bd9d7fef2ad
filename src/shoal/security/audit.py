"""The audit trail: one JSON line per authentication, authorization denial and
administrative change, to a file that rotates (`audit.log.path`).

Lines go through a queue to a writer thread (stdlib QueueHandler and
QueueListener), so neither the write nor a rotation blocks the event loop. The
schema is in docs/SECURITY.md ("Audit trail"); every line has `time`, `event`,
`principal`, `client_address`, `client_id` and `listener`, then the event's
own fields.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import queue
from typing import Any, Protocol


class Who(Protocol):
    """What a line says about the client (a connection's Client)."""

    @property
    def principal(self) -> str: ...

    @property
    def peer(self) -> str: ...

    @property
    def client_id(self) -> str | None: ...

    @property
    def listener(self) -> str: ...


class AuditLog:
    """Writes audit lines when a path is configured; otherwise does nothing."""

    def __init__(self, path: str = "", max_bytes: int = 100 << 20, backups: int = 10) -> None:
        self.enabled = bool(path)
        self.path = path
        self._listener: logging.handlers.QueueListener | None = None
        # Not registered with logging's manager: broker-logger configs (which
        # list and set every shoal.* logger) cannot see or silence the trail.
        self._log = logging.Logger("shoal.audit", logging.INFO)
        self._log.propagate = False
        if not self.enabled:
            return
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._log.addHandler(logging.handlers.QueueHandler(q))
        self._listener = logging.handlers.QueueListener(q, handler)
        self._listener.start()

    def close(self) -> None:
        """Write what is queued and stop the writer thread."""
        if self._listener is not None:
            self._listener.stop()
            for h in self._listener.handlers:
                h.close()
            self._listener = None
        for h in list(self._log.handlers):
            self._log.removeHandler(h)

    def write(self, event: str, who: Who | None, **fields: Any) -> None:
        if not self.enabled:
            return
        line: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "event": event,
        }
        if who is not None:
            line["principal"] = who.principal
            line["client_address"] = who.peer
            line["client_id"] = who.client_id
            line["listener"] = who.listener
        line.update(fields)
        self._log.info(json.dumps(line, separators=(",", ":"), default=str))

    def authentication(
        self, who: Who, mechanism: str, success: bool, error: str | None = None
    ) -> None:
        """A SASL (or mutual TLS) authentication, either way."""
        self.write("authentication", who, mechanism=mechanism, success=success, error=error)

    def denied(self, who: Who, operation: str, resource_type: str, resource_name: str) -> None:
        self.write(
            "authorization_denied",
            who,
            operation=operation,
            resource_type=resource_type,
            resource_name=resource_name,
        )

    def admin(
        self,
        who: Who,
        action: str,
        resource_type: str,
        resource_name: str,
        result: str = "NONE",
        **details: Any,
    ) -> None:
        """An administrative change (or attempt): `result` is NONE or the
        Kafka error name it was answered with."""
        self.write(
            "admin",
            who,
            action=action,
            resource_type=resource_type,
            resource_name=resource_name,
            result=result.upper(),  # Kafka's spelling: NONE, TOPIC_AUTHORIZATION_FAILED
            **({"details": details} if details else {}),
        )
