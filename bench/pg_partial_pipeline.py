"""What PostgreSQL does with a session cut off in the middle of a request
(issue 17, item 4; docs/RELIABILITY.md, "One stall not explained").

Three raw-protocol sessions on the embedded server, each with Shoal's
idle_in_transaction_session_timeout (2 s): one begins a transaction, updates
a row and sends a Parse message without the Sync that ends the pipeline (a
link cut between two TCP segments of one request); one sits idle in its
transaction; one does the first with `transaction_timeout` too (PostgreSQL
17+, what brokers set). After 4 s: which are still there, in which state.

    .venv/bin/python bench/pg_partial_pipeline.py
"""

from __future__ import annotations

import glob
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sqlalchemy import make_url

from cluster_harness import new_database, postgres


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _until_ready(s: socket.socket) -> None:
    buf = b""
    while b"Z\0\0\0\x05" not in buf:
        buf += s.recv(65536)


def session(path: str, db: str, name: str, options: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    params = [("user", "postgres"), ("database", db), ("application_name", name)]
    params.append(("options", options))
    body = struct.pack("!I", 196608) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params
    )
    body += b"\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    _until_ready(s)
    return s


def query(s: socket.socket, sql: str) -> None:
    s.sendall(_msg(b"Q", sql.encode() + b"\0"))
    _until_ready(s)


def main() -> None:
    url = make_url(new_database())
    db = str(url.database)
    path = glob.glob(f"{url.query['host']}/.s.PGSQL.*")[0]
    postgres().psql(
        f"\\c {db}\nCREATE TABLE t (id int primary key, v int); "
        "INSERT INTO t VALUES (1, 0), (2, 0);"
    )
    idle = "-c idle_in_transaction_session_timeout=2000"
    held = []
    for name, opts, row in [
        ("partial", idle, 1),
        ("partial+transaction_timeout", idle + " -c transaction_timeout=2500", 2),
    ]:
        s = session(path, db, name, opts)
        query(s, f"BEGIN; UPDATE t SET v = v + 1 WHERE id = {row};")
        s.sendall(_msg(b"P", b"\0SELECT 1\0\0\0"))  # Parse, and no Sync
        held.append(s)
    s = session(path, db, "idle-in-transaction", idle)
    query(s, "BEGIN; SELECT 1;")
    held.append(s)
    time.sleep(4)
    print(
        postgres().psql(
            "SELECT application_name, state, wait_event, now() - xact_start AS in_transaction "
            "FROM pg_stat_activity WHERE application_name IN "
            "('partial', 'partial+transaction_timeout', 'idle-in-transaction');"
        )
    )


if __name__ == "__main__":
    main()
