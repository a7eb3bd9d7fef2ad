"""Sans-IO parts of the fleet view: the report a gateway builds from its
status, the console's reading of it (bad records skipped, silence, sort and
filter), sessions, the config parser of the create-topic form, and the
transactions page's rows and filters."""

from __future__ import annotations

import json

import pytest

from shoal.console.actions import ActionError, parse_configs
from shoal.console.app import _safe_next
from shoal.console.auth import Sessions
from shoal.console.sites import BadReport, SiteBook, parse_report
from shoal.console.txns import select, txn_row
from shoal.edge.report import site_report
from shoal.txn.state import TxnMeta, TxnState

SNAPSHOT = {
    "site": "plant-7",
    "running": True,
    "uptime_s": 12.0,
    "local": {"records_in": 40},
    "mqtt": {"connected": True},
    "lanes": [
        {
            "name": "alarms",
            "priority": 0,
            "topics": ["alarms"],
            "disk_used_bytes": 1000,
            "disk_budget_bytes": 5000,
            "blocked": False,
            "drops": {"ttl": {"records": 3, "bytes": 30}},
            "uplinks": {
                "central": {"backlog_records": 4, "backlog_bytes": 400, "oldest_unsent_age_s": 9.5}
            },
        },
        {
            "name": "bulk",
            "priority": 5,
            "topics": ["telemetry"],
            "disk_used_bytes": 2000,
            "disk_budget_bytes": 0,
            "blocked": True,
            "drops": {},
            "uplinks": {
                "central": {"backlog_records": 6, "backlog_bytes": 600, "oldest_unsent_age_s": 2.0}
            },
        },
    ],
    "uplinks": [
        {
            "name": "central",
            "state": "backoff",
            "last_error": "all brokers down",
            "rate_records_per_s": 1.5,
            "partitions": [
                {"topic": "telemetry", "central_topic": "plant-7.telemetry"},
                {"topic": "telemetry", "central_topic": "plant-7.telemetry"},
            ],
        }
    ],
}


def test_site_report_sums_lanes_for_its_uplink() -> None:
    r = site_report(SNAPSHOT, "central", 5000, now=100.0)
    assert (r["site"], r["time"], r["interval_ms"]) == ("plant-7", 100.0, 5000)
    assert (r["backlog_records"], r["backlog_bytes"]) == (10, 1000)
    assert r["oldest_unsent_age_s"] == 9.5
    assert r["dropped_records"] == 3
    assert (r["disk_used_bytes"], r["disk_budget_bytes"]) == (3000, 5000)
    assert r["uplink"]["state"] == "backoff" and r["uplink"]["last_error"] == "all brokers down"
    assert r["feeds"] == [{"local": "telemetry", "central": "plant-7.telemetry"}]
    assert [lane["blocked"] for lane in r["lanes"]] == [False, True]
    # what the console reads back is what was sent
    assert parse_report(b"plant-7", json.dumps(r).encode()) == r


def _report(site: str, t: float, backlog: int = 0, **kw: object) -> bytes:
    r = site_report({**SNAPSHOT, "site": site}, "central", 1000, now=t)
    r["backlog_records"] = backlog
    r.update(kw)
    return json.dumps(r).encode()


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (b"a", b"{not json", "not JSON"),
        (b"a", b"[1, 2]", "not a v1 site report"),
        (b"a", json.dumps({"v": 2, "site": "a", "time": 1}).encode(), "not a v1"),
        (b"a", json.dumps({"v": 1, "time": 1}).encode(), "no site"),
        (b"b", json.dumps({"v": 1, "site": "a", "time": 1}).encode(), "is not its site"),
        (b"a", json.dumps({"v": 1, "site": "a"}).encode(), "no time"),
    ],
)
def test_bad_records_are_named_and_skipped(key: bytes, value: bytes, why: str) -> None:
    with pytest.raises(BadReport, match=why):
        parse_report(key, value)
    book = SiteBook()
    book.apply(key, value)
    assert book.sites == {} and book.bad == 1


def test_silence_stop_order_and_tombstones() -> None:
    book = SiteBook()
    book.apply(b"a", _report("a", 100.0, 5))
    book.apply(b"b", _report("b", 104.0, 50))
    book.apply(b"a", _report("a", 90.0, 999))  # older: ignored
    assert book.sites["a"].report["backlog_records"] == 5
    # interval 1 s: silent once the report is older than 3 intervals + 2 s
    assert book.sites["a"].state(104.9) == "backoff"
    assert book.sites["a"].state(105.1) == "silent"
    row = book.sites["a"].row(106.0)
    assert row["silent_since"] == 100.0 and row["last_report_age_s"] == 6.0
    book.apply(b"b", _report("b", 105.0, 50, running=False))
    assert book.sites["b"].state(105.5) == "stopped"
    assert [r["site"] for r in book.rows(105.5, sort="backlog_records", descending=True)] == [
        "b",
        "a",
    ]
    assert [r["site"] for r in book.rows(105.5, state="stopped")] == ["b"]
    assert [r["site"] for r in book.rows(105.5, text="A")] == ["a"]
    assert len(book.sites["b"].history) == 2
    book.apply(b"b", None)  # a tombstone removes the site
    assert list(book.sites) == ["a"]


def test_sessions_and_csrf() -> None:
    s = Sessions(60, key=b"k" * 32)
    cookie = s.issue("ops")
    who = s.read(cookie, "10.0.0.1:0")
    assert who is not None and who.principal == "User:ops"
    assert s.check_csrf(who, s.csrf(who))
    assert not s.check_csrf(who, None) and not s.check_csrf(who, "0" * 64)
    assert s.read(cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), "x") is None
    assert Sessions(60, key=b"j" * 32).read(cookie, "x") is None  # another broker's key
    assert Sessions(-1, key=b"k" * 32).read(Sessions(-1, key=b"k" * 32).issue("ops"), "x") is None
    assert s.read("garbage", "x") is None and s.read(None, "x") is None


def test_config_lines() -> None:
    assert parse_configs("retention.ms=1000\ncleanup.policy = compact") == {
        "retention.ms": "1000",
        "cleanup.policy": "compact",
    }
    assert parse_configs("a=1, b=2") == {"a": "1", "b": "2"}
    with pytest.raises(ActionError, match="'retention' is not KEY=VALUE"):
        parse_configs("retention")


@pytest.mark.parametrize(
    ("target", "to"),
    [
        ("/topics?x=1", "/topics?x=1"),
        ("https://evil.example/", "/fleet"),
        ("//evil.example/", "/fleet"),
        ("/\\evil.example/", "/fleet"),
        ("fleet", "/fleet"),
    ],
)
def test_login_redirects_stay_on_the_console(target: str, to: str) -> None:
    assert _safe_next(target) == to


def _txn(tid: str, state: TxnState, start_ms: int, timeout_ms: int = 60_000) -> TxnMeta:
    return TxnMeta(tid, 7, 2, timeout_ms, state, {("out", 1), ("out", 0)}, start_ms=start_ms)


def test_transaction_rows_mark_the_hanging_ones() -> None:
    now, older = 1_000_000, 300_000  # highlight after 5 minutes
    fresh = txn_row(_txn("a", TxnState.ONGOING, now - 10_000), now, older, 0)
    assert fresh["open"] and not fresh["hanging"] and fresh["age_s"] == 10.0
    assert fresh["partitions"] == ["out-0", "out-1"] and fresh["producer_epoch"] == 2
    # past its own timeout (the coordinator has not aborted it yet)
    late = txn_row(_txn("b", TxnState.ONGOING, now - 2_000, timeout_ms=1_000), now, older, 0)
    assert late["hanging"]
    # past the page's threshold, still within a long timeout
    old = txn_row(_txn("c", TxnState.PREPARE_COMMIT, now - 400_000, 900_000), now, older, 1)
    assert old["hanging"] and old["coordinator"] == 1
    # a finished transaction has no age and never hangs
    done = txn_row(_txn("d", TxnState.COMPLETE_COMMIT, now - 900_000), now, older, 0)
    assert not done["open"] and not done["hanging"] and done["age_s"] is None
    idle = txn_row(_txn("e", TxnState.EMPTY, -1), now, older, 0)
    assert idle["start_ms"] is None and not idle["hanging"]


def test_transaction_filters() -> None:
    now = 1_000_000
    rows = [
        txn_row(_txn(tid, state, now - 1000), now, 300_000, 0)
        for tid, state in (
            ("pay-2", TxnState.ONGOING),
            ("pay-1", TxnState.COMPLETE_ABORT),
            ("ship-1", TxnState.PREPARE_ABORT),
        )
    ]

    def ids(got: list[dict[str, object]]) -> list[object]:
        return [r["transactional_id"] for r in got]

    assert ids(select(rows, None, None)) == ["pay-1", "pay-2", "ship-1"]
    assert ids(select(rows, "open", None)) == ["pay-2", "ship-1"]
    assert ids(select(rows, "CompleteAbort", None)) == ["pay-1"]
    assert ids(select(rows, None, "pay-")) == ["pay-1", "pay-2"]
    assert ids(select(rows, "open", "ship")) == ["ship-1"]
    assert select(rows, "Empty", None) == []
