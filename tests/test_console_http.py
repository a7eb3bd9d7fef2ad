"""The web console over HTTP (aiohttp's client): a real edge gateway reports
its site to a broker serving the console; every page and /api endpoint,
login, CSRF, permissions and bad input answered with a clear message; a
migration link from a second broker and a real transactional producer."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import console_helpers
from console_helpers import PASSWORD, ConsoleBroker, console_broker, create_topic, gateway
from edge_harness import GatewayProcess, wait_for
from harness import BrokerProcess, free_port
from shoal.link.cli import link

# the migration-link source broker, shared with the other console tests
starting_source = console_helpers.starting_source
source = console_helpers.source

SITE = "site-a"
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, starting_source: Future[BrokerProcess]
) -> Iterator[tuple[ConsoleBroker, GatewayProcess]]:
    tmp = tmp_path_factory.mktemp("console_http")
    # cluster mode on one broker (SQLite): leases, owners, drain and moves are real
    broker = console_broker(
        tmp, **{"metrics.listen": f"127.0.0.1:{METRICS_PORT}", "cluster.enable": "true"}
    )
    gw = gateway(tmp, broker, SITE).start()
    p = Producer({"bootstrap.servers": gw.kafka})
    for i in range(30):
        p.produce("telemetry", key=b"dev-1", value=b"x" * 100 + str(i).encode())
    assert p.flush(30) == 0
    yield broker, gw
    gw.stop()
    broker.stop()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _login(s: aiohttp.ClientSession, base: str, user: str = "admin") -> None:
    async with s.post(
        base + "/login", data={"user": user, "password": PASSWORD}, allow_redirects=False
    ) as r:
        assert r.status == 303, await r.text()


@pytest.fixture
async def admin(env: tuple[ConsoleBroker, GatewayProcess]) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url=env[0].console, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as s:
        await _login(s, "")
        yield s


async def _csrf(s: aiohttp.ClientSession, page: str = "/topics") -> str:
    async with s.get(page) as r:
        m = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
    assert m, "no CSRF token on the page"
    return m.group(1)


async def _site(s: aiohttp.ClientSession) -> dict[str, Any]:
    async with s.get(f"/api/sites/{SITE}") as r:
        if r.status != 200:
            return {}
        doc: dict[str, Any] = await r.json()
        return doc


async def _until(pred: Any, timeout: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await pred()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def test_pages_need_a_login(env: tuple[ConsoleBroker, GatewayProcess]) -> None:
    base = env[0].console
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(base + "/fleet", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/login")
        async with s.get(base + "/api/sites") as r:
            assert r.status == 401
        async with s.get(base + "/api/sites", headers=_basic("admin", "wrong")) as r:
            assert r.status == 401
        async with s.post(base + "/login", data={"user": "admin", "password": "nope"}) as r:
            assert r.status == 401
            assert "wrong password" in await r.text()
        async with s.get(base + "/api/cluster", headers=_basic("admin", PASSWORD)) as r:
            assert r.status == 200
            assert (await r.json())["brokers"][0]["node_id"] == 0
        forged = "eyJ1IjoiYWRtaW4iLCJleHAiOjk5OTk5OTk5OTksIm4iOiJ4In0.00"
        async with s.get(
            base + "/fleet", cookies={"shoal_console": forged}, allow_redirects=False
        ) as r:
            assert r.status == 303


async def test_gateway_report_shows_its_site_and_backlog(
    env: tuple[ConsoleBroker, GatewayProcess], admin: aiohttp.ClientSession
) -> None:
    """The central topic does not exist (no auto-create): the 30 records stay
    in the gateway's backlog, and its report says so."""
    site = await _until(
        lambda: _site(admin), 30, "a report with the backlog"
    )  # first report within seconds
    site = await _until(lambda: _has_backlog(admin), 30, "the backlog of 30 records in the report")
    assert site["state"] in ("connecting", "degraded", "error"), site["state"]
    report = site["report"]
    assert report["uplink"]["name"] == "central"
    assert [f["central"] for f in report["feeds"]] == ["telemetry"]
    assert report["lanes"][0]["backlog_records"] == 30
    assert site["history"], "no history points"
    async with admin.get("/fleet") as r:
        html = await r.text()
    assert f'data-site="{SITE}"' in html
    async with admin.get(f"/sites/{SITE}") as r:
        html = await r.text()
    assert r.status == 200 and "<svg" in html and "telemetry" in html
    # the report topic was created compacted by the gateway
    async with admin.get("/api/topics/_shoal_sites") as r:
        configs = {c["name"]: c["value"] for c in (await r.json())["configs"]}
    assert configs["cleanup.policy"] == "compact"
    # and per-site metrics on the broker's Prometheus endpoint
    async with aiohttp.ClientSession() as plain:
        async with plain.get(f"http://127.0.0.1:{METRICS_PORT}/metrics") as r:
            metrics = await r.text()
    assert f'shoal_site_backlog_records{{site="{SITE}"}} 30.0' in metrics
    assert f'shoal_site_up{{site="{SITE}"}} 1.0' in metrics


async def _has_backlog(s: aiohttp.ClientSession) -> dict[str, Any] | None:
    site = await _site(s)
    return site if site and site.get("backlog_records") == 30 else None


async def test_every_api_endpoint_and_its_bad_input(admin: aiohttp.ClientSession) -> None:
    for path in (
        "/api/cluster",
        "/api/topics",
        "/api/groups",
        "/api/sites",
        "/api/links",
        "/api/transactions",
    ):
        async with admin.get(path) as r:
            assert r.status == 200, path
            assert isinstance(await r.json(), dict)
    async with admin.get("/api/sites?sort=backlog_records&desc=1&state=") as r:
        assert r.status == 200
    async with admin.get("/api/sites?state=fenced") as r:  # an exactly-once uplink's state
        assert r.status == 200, await r.text()
    for path, status, words in (
        ("/api/topics/no-such-topic", 404, "no topic 'no-such-topic'"),
        ("/api/groups/no-such-group", 404, "no group 'no-such-group'"),
        ("/api/sites/no-such-site", 404, "no site 'no-such-site'"),
        ("/api/sites?sort=colour", 400, "sort: 'colour' is not one of"),
        ("/api/sites?state=asleep", 400, "state: 'asleep' is not one of"),
        ("/api/sites?limit=0", 400, "limit: '0' is not a number of sites"),
        ("/fleet?limit=many", 400, "limit: 'many' is not"),
        ("/topics/no-such-topic", 404, "no topic"),
        ("/fleet?sort=colour", 400, "sort: "),
    ):
        async with admin.get(path) as r:
            text = await r.text()
            assert r.status == status, (path, text)
            assert words in text.replace("&#39;", "'"), (path, text)
    for page in (
        "/fleet",
        "/cluster",
        "/topics",
        "/groups",
        "/topics/_shoal_sites",
        "/links",
        "/transactions",
    ):
        async with admin.get(page) as r:
            assert r.status == 200, page
        async with admin.get(page + "?partial=1") as r:
            text = await r.text()
            assert r.status == 200 and "<html" not in text and "<h1>" in text, page


async def _config(s: aiohttp.ClientSession, topic: str, key: str, value: str) -> bool:
    async with s.get(f"/api/topics/{topic}") as r:
        configs = {c["name"]: c["value"] for c in (await r.json())["configs"]}
    return configs[key] == value


async def _act(
    s: aiohttp.ClientSession, action: str, form: dict[str, str], csrf: str | None
) -> tuple[int, str]:
    data = {**form, "confirm": "1"}
    if csrf is not None:
        data["csrf"] = csrf
    async with s.post(f"/actions/{action}", data=data) as r:
        return r.status, (await r.text()).replace("&#39;", "'")


async def test_actions_confirm_then_act_and_refuse_bad_input(
    env: tuple[ConsoleBroker, GatewayProcess], admin: aiohttp.ClientSession
) -> None:
    csrf = await _csrf(admin)
    # without confirm=1: a confirmation page, nothing done
    async with admin.post(
        "/actions/create-topic", data={"csrf": csrf, "name": "console-a", "partitions": "2"}
    ) as r:
        assert "Confirm: create topic" in await r.text()
    assert "console-a" not in _topics(env[0])
    status, _ = await _act(admin, "create-topic", {"name": "console-a", "partitions": "2"}, csrf)
    assert status == 200
    # a Kafka client sees it (once it has an owner: cluster mode)
    wait_for(lambda: "console-a" in _topics(env[0]), 15, "console-a in Metadata")
    for action, form, words in (
        ("create-topic", {"name": "console-a", "partitions": "1"}, "already exists"),
        ("create-topic", {"name": "bad name!", "partitions": "1"}, "bad name!"),
        ("create-topic", {"name": "console-b", "partitions": "two"}, "'two' is not a whole"),
        (
            "alter-config",
            {"topic": "console-a", "key": "retention.ms", "value": "soon"},
            "retention.ms: 'soon'",
        ),
        ("alter-config", {"topic": "nope", "key": "retention.ms", "value": "1"}, "no topic"),
        ("reset-offsets", {"group": "g", "topic": "nope", "to": "earliest"}, "no topic 'nope'"),
        (
            "reset-offsets",
            {"group": "g", "topic": "console-a", "to": "99"},
            "offset 99 is outside",
        ),
        ("move-partition", {"topic": "console-a", "partition": "0", "to": "5"}, "not live"),
        ("move-partition", {"topic": "console-a", "partition": "7", "to": "0"}, "console-a-7"),
        ("move-partition", {"topic": "console-a", "partition": "x", "to": "0"}, "'x' is not"),
        ("drain-broker", {"node": "7"}, "broker 7 is not registered"),
    ):
        status, text = await _act(admin, action, form, csrf)
        assert status == 400, (action, form, text)
        assert words in text, (action, text)
    status, text = await _act(
        admin, "alter-config", {"topic": "console-a", "key": "retention.ms", "value": "60000"}, csrf
    )
    assert status == 200, text
    # (cluster mode: the catalog's next refresh may briefly show the old value)
    await _until(lambda: _config(admin, "console-a", "retention.ms", "60000"), 15, "the config")
    status, text = await _act(admin, "drain-broker", {"node": "0"}, csrf)
    assert status == 200, text
    async with admin.get("/api/cluster") as r:
        assert [b["state"] for b in (await r.json())["brokers"]] == ["draining"]
    status, text = await _act(admin, "drain-broker", {"node": "0", "undo": "1"}, csrf)
    assert status == 200, text
    async with admin.get("/api/cluster") as r:
        assert [b["state"] for b in (await r.json())["brokers"]] == ["alive"]
    status, text = await _act(
        admin, "reset-offsets", {"group": "ops", "topic": "console-a", "to": "latest"}, csrf
    )
    assert status == 200, text
    async with admin.get("/api/groups/ops") as r:
        offsets = (await r.json())["offsets"]
    assert [(o["topic"], o["partition"], o["committed"]) for o in offsets] == [
        ("console-a", 0, 0),
        ("console-a", 1, 0),
    ]


async def test_csrf_missing_or_wrong_is_refused(
    env: tuple[ConsoleBroker, GatewayProcess], admin: aiohttp.ClientSession
) -> None:
    for token in (None, "0" * 64):
        status, text = await _act(
            admin, "create-topic", {"name": "csrf-x", "partitions": "1"}, token
        )
        assert status == 403 and "CSRF token is missing or wrong" in text
    assert "csrf-x" not in _topics(env[0])


async def test_a_principal_without_permission_is_refused(
    env: tuple[ConsoleBroker, GatewayProcess],
) -> None:
    async with aiohttp.ClientSession(
        base_url=env[0].console, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as s:
        await _login(s, "", "viewer")
        csrf = await _csrf(s)
        status, text = await _act(s, "create-topic", {"name": "viewer-t", "partitions": "1"}, csrf)
        assert status == 403
        assert "refused: User:viewer may not CREATE TOPIC 'viewer-t'" in text
        status, text = await _act(s, "drain-broker", {"node": "0"}, csrf)
        assert status == 403 and "may not ALTER CLUSTER" in text
    assert "viewer-t" not in _topics(env[0])


async def _link_cli(broker: ConsoleBroker, *args: str, code: int = 0) -> Any:
    """`shoal link ...` (in a thread: it runs its own event loop)."""
    runner = CliRunner()
    r = await asyncio.to_thread(runner.invoke, link, [*args, "--metadata", broker.metadata_url])
    assert r.exit_code == code, r.output
    return r


async def _json(s: aiohttp.ClientSession, path: str) -> Any:
    async with s.get(path) as r:
        assert r.status == 200, (path, await r.text())
        return await r.json()


async def test_a_links_mirror_partitions_and_synced_group(
    env: tuple[ConsoleBroker, GatewayProcess], source: BrokerProcess, admin: aiohttp.ClientSession
) -> None:
    broker = env[0]
    topic, group, lnk = "orders", "billing", "from-dc1"
    create_topic(source.bootstrap, topic, 2)
    p = Producer({"bootstrap.servers": source.bootstrap, "enable.idempotence": True})
    for i in range(40):
        p.produce(topic, value=b"order %d" % i, partition=i % 2)
    assert p.flush(20) == 0
    c = Consumer({"bootstrap.servers": source.bootstrap, "group.id": group})
    c.commit(offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7)], asynchronous=False)
    c.close()
    await _link_cli(broker, "create", lnk, "--source", source.bootstrap, "--topics", topic,
              "--groups", group)  # fmt: skip

    async def caught_up() -> dict[str, Any] | None:
        doc: dict[str, Any] = await _json(admin, f"/api/links/{lnk}")
        ends = [p["mirror_end"] for m in doc["mirrors"] for p in m["partitions"]]
        return doc if ends == [20, 20] and doc["synced_groups"] else None

    doc = await _until(caught_up, 30, "the mirror at the source's end and the group synced")
    assert (doc["source"], doc["state"], doc["mirror_count"]) == (source.bootstrap, "active", 1)
    [m] = doc["mirrors"]
    assert (m["mirror"], m["source_topic"], m["state"]) == (topic, topic, "mirroring")
    assert m["lag_records"] == 0 and m["errors"] == [] and m["reverse"] is None
    for part in m["partitions"]:
        assert (part["source_end"], part["lag"], part["lag_seconds"]) == (20, 0, 0.0)
        assert part["bytes"] > 0 and part["bytes_per_s"] >= 0 and part["error"] == ""
    # the source's committed offsets, copied here; the group's lag on the mirror
    assert doc["synced_groups"] == [
        {"group": group, "state": "Empty", "members": 0, "partitions": 2, "lag": 15 + 13}
    ]
    # `shoal link status` reads the same rows
    [row] = json.loads((await _link_cli(broker, "status", lnk, "--format", "json")).output)
    assert [p["mirror_end"] for p in row["partitions"]] == [20, 20]
    assert row["bytes"] == m["bytes"]
    listed = (await _json(admin, "/api/links"))["links"]
    assert [(x["name"], x["mirror_topics"], x["lag_records"], x["errors"]) for x in listed] == [
        (lnk, [topic], 0, [])
    ]
    async with admin.get("/links") as r:
        assert f'data-link="{lnk}"' in await r.text()
    async with admin.get(f"/links/{lnk}") as r:
        html = await r.text()
    assert f'data-mirror="{topic}"' in html and f'data-group="{group}"' in html
    async with admin.get(f"/links/{lnk}?partial=1") as r:
        text = await r.text()
        assert "<html" not in text and f'data-mirror="{topic}"' in text
    await _link_cli(broker, "pause", lnk)
    assert (await _json(admin, "/api/links"))["links"][0]["state"] == "paused"
    # an unknown link: named by the CLI and the console alike
    r = await _link_cli(broker, "status", "no-such-link", code=1)
    assert "no link named 'no-such-link'" in r.output
    for path in ("/api/links/no-such-link", "/links/no-such-link"):
        async with admin.get(path) as r:
            assert r.status == 404, path
            assert "no link 'no-such-link'" in (await r.text()).replace("&#39;", "'")


def _open_transaction(broker: ConsoleBroker, tid: str, topic: str) -> Producer:
    """A transactional producer with one record written in a transaction
    left open, on a new one-partition `topic`."""
    bootstrap = broker.address("PLAINTEXT")
    create_topic(bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid})
    p.init_transactions(20)
    p.begin_transaction()
    p.produce(topic, value=b"pending")
    assert p.flush(20) == 0
    return p


async def test_an_open_transaction_and_the_filters(
    env: tuple[ConsoleBroker, GatewayProcess], admin: aiohttp.ClientSession
) -> None:
    tid = "console-txn-1"
    p = _open_transaction(env[0], tid, "txn-out")

    async def listed(query: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (await _json(admin, "/api/transactions" + query))[
            "transactions"
        ]
        return [r for r in rows if r["transactional_id"] == tid]

    async def ongoing() -> list[dict[str, Any]]:
        return [r for r in await listed("") if r["state"] == "Ongoing" and r["partitions"]]

    [t] = await _until(ongoing, 15, "the open transaction")
    assert t["open"] and not t["hanging"] and t["partitions"] == ["txn-out-0"]
    assert t["timeout_ms"] == 60_000 and t["coordinator"] == 0 and t["age_s"] >= 0
    assert t["producer_id"] >= 0 and t["producer_epoch"] >= 0
    assert await listed("?state=open&id=console-") and await listed("?state=Ongoing")
    assert not await listed("?id=other") and not await listed("?state=CompleteCommit")
    async with admin.get("/transactions?state=open") as r:
        assert f'data-txn="{tid}"' in await r.text()
    p.commit_transaction(20)
    [done] = await _until(lambda: listed("?state=CompleteCommit"), 15, "the commit")
    assert not done["open"] and done["age_s"] is None
    assert not await listed("?state=open")
    csrf = await _csrf(admin, "/transactions")
    for form, words in (
        ({"transactional_id": tid}, f"{tid!r} has no open transaction to abort"),
        ({"transactional_id": "nobody"}, "no transactional id 'nobody'"),
        ({"transactional_id": " "}, "transactional_id is required"),
    ):
        status, text = await _act(admin, "abort-transaction", form, csrf)
        assert status == 400 and words in text, (form, text)
    for path, words in (
        ("/api/transactions?state=Sleeping", "state: 'Sleeping' is not one of open, Empty"),
        ("/api/transactions?older=0", "older: '0' is not a number of minutes"),
        ("/api/transactions?older=soon", "older: 'soon' is not"),
        ("/api/transactions?older=%C2%B2", "older: '²' is not"),
        ("/api/sites?limit=%C2%B2", "limit: '²' is not"),
        ("/transactions?state=x", "state: 'x' is not"),
    ):
        async with admin.get(path) as r:
            text = (await r.text()).replace("&#39;", "'")
            if path.startswith("/api/"):
                text = json.loads(text)["error"]
            assert r.status == 400 and words in text, (path, text)


async def test_a_hanging_transaction_is_aborted_from_the_console(
    env: tuple[ConsoleBroker, GatewayProcess], admin: aiohttp.ClientSession
) -> None:
    """Confirmed, refused without WRITE on the transactional id, then done:
    the transaction is aborted and the producer still holding the old epoch
    is fenced."""
    tid = "console-txn-hanging"
    p = _open_transaction(env[0], tid, "txn-hang")

    async def row() -> dict[str, Any] | None:
        rows = (await _json(admin, f"/api/transactions?id={tid}"))["transactions"]
        return rows[0] if rows and rows[0]["partitions"] else None

    before = await _until(row, 15, "the open transaction")
    form = {"transactional_id": tid}
    async with aiohttp.ClientSession(
        base_url=env[0].console, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as viewer:
        await _login(viewer, "", "viewer")
        status, text = await _act(viewer, "abort-transaction", form, await _csrf(viewer))
    assert status == 403 and f"User:viewer may not WRITE TRANSACTIONAL_ID {tid!r}" in text
    assert (await row() or {}).get("state") == "Ongoing"
    csrf = await _csrf(admin, "/transactions")
    async with admin.post("/actions/abort-transaction", data={**form, "csrf": csrf}) as r:
        assert "Confirm: abort transaction" in await r.text()
    status, text = await _act(admin, "abort-transaction", form, csrf)
    assert status == 200, text
    assert f"aborted the open transaction of {tid} on txn-hang-0" in text
    [after] = (await _json(admin, f"/api/transactions?id={tid}"))["transactions"]
    # aborted, then ready for the new incarnation (as after a producer's restart)
    assert after["state"] == "Empty" and not after["open"] and after["partitions"] == []
    assert (after["producer_id"], after["producer_epoch"]) != (
        before["producer_id"],
        before["producer_epoch"],
    )
    with pytest.raises(KafkaException) as fenced:
        p.commit_transaction(20)
    assert fenced.value.args[0].fatal(), fenced.value


def test_a_stopped_site_says_so(env: tuple[ConsoleBroker, GatewayProcess]) -> None:
    """Last in this module: stops the module's gateway, whose final report
    says it stopped (a killed one goes silent: the browser test)."""
    broker, gw = env

    def site() -> dict[str, Any]:
        req = urllib.request.Request(
            f"{broker.console}/api/sites/{SITE}", headers=_basic("admin", PASSWORD)
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    assert site()["state"] not in ("stopped", "silent")
    assert gw.stop() == 0
    got = wait_for(lambda: site()["state"] == "stopped" and site(), 30, "the stopped state")
    assert got["silent_since"] == got["last_report"]
    assert got["report"]["running"] is False


def _topics(broker: ConsoleBroker) -> set[str]:
    md = AdminClient({"bootstrap.servers": broker.address("PLAINTEXT")}).list_topics(timeout=10)
    return set(md.topics)
