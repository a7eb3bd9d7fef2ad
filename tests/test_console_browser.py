"""The console in a real browser: headless Chromium (Debian's `chromium`,
driven by Playwright through its executable path) against a broker, an MQTT
broker (amqtt) and two edge gateways: `plant-1`, whose devices publish over
MQTT, and `plant-2`, with no devices, which only reports. A second broker
is the source of a migration link into the console's broker, and a
confluent-kafka transactional producer leaves a transaction open.

The central topic plant-1 forwards to does not exist and is not
auto-created, so its backlog grows and shows on the fleet page until an
operator creates the topic from the console. One browser for the module; a
context (cookie jar) per user.

Each page is saved as a screenshot, for review, to `$SHOAL_SCREENSHOTS` or
else to a pytest temporary directory (the suite writes nothing into the
repository); docs/CONSOLE.md shows the ones taken with
`SHOAL_SCREENSHOTS=docs/console`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

import console_helpers
from console_helpers import PASSWORD, ConsoleBroker, console_broker, gateway
from edge_harness import GatewayProcess, publish
from harness import BrokerProcess
from mqtt_broker import MqttBroker
from shoal.link.cli import link

# the migration-link source broker, shared with the other console tests
starting_source = console_helpers.starting_source
source = console_helpers.source

CHROMIUM = os.environ.get("SHOAL_CHROMIUM") or shutil.which("chromium")
if CHROMIUM is None:
    pytest.skip(
        "chromium is not installed (apt-get install -y chromium); the console's browser "
        "tests need it",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect

SITE = "plant-1"
OTHER = "plant-2"
LINK = "from-dc1"
MIRRORED = "orders"
TXN = "checkout-7"
WAIT_MS = 30_000
VIEWPORT = {"width": 1100, "height": 720}  # modest, so the screenshots stay small


class Env:
    def __init__(self, tmp: Path) -> None:
        self.broker: ConsoleBroker = console_broker(tmp)
        self.mqtt = MqttBroker(tmp / "mqtt").start()
        self.gw: GatewayProcess = gateway(tmp, self.broker, SITE, mqtt_port=self.mqtt.port)
        self.gw.start()
        self.other: GatewayProcess = gateway(tmp, self.broker, OTHER).start()
        self.sent = 0

    def publish(self, n: int) -> None:
        msgs = [("devices/d1/data", f"reading {self.sent + i}".encode()) for i in range(n)]
        publish(self.mqtt.port, msgs, client_id="d1")
        self.sent += n

    def topics(self) -> set[str]:
        admin = AdminClient({"bootstrap.servers": self.broker.address("PLAINTEXT")})
        return set(admin.list_topics(timeout=10).topics)

    def stop(self) -> None:
        self.gw.kill()
        self.other.kill()
        self.mqtt.stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, starting_source: Future[BrokerProcess]
) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("console_browser"))
    e.publish(25)
    yield e
    e.stop()


@pytest.fixture(scope="module")
def browser(env: Env) -> Iterator[Any]:
    """After env: Playwright's sync API keeps an event loop on this thread,
    and env's set-up runs asyncio.run."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("SHOAL_SCREENSHOTS")
    if not where:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shot(page: Any, shots: Path, name: str) -> None:
    """The visible viewport as a PNG: a page's top is what a reviewer needs."""
    path = shots / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 0


def login(browser: Any, env: Env, user: str, shots: Path | None = None, **context: Any) -> Any:
    context.setdefault("viewport", VIEWPORT)
    page = browser.new_context(**context).new_page()
    page.goto(env.broker.console + "/fleet")
    expect(page.locator("h1")).to_have_text("Log in")
    if shots is not None:
        shot(page, shots, "login")
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1").first).to_have_text("Fleet")
    return page


@pytest.fixture(scope="module")
def admin(browser: Any, env: Env, shots: Path) -> Any:
    return login(browser, env, "admin", shots)


def backlog(page: Any, site: str = SITE) -> Any:
    return page.locator(f'tr[data-site="{site}"] td.backlog')


def test_fleet_shows_both_sites_and_their_backlog(admin: Any, shots: Path) -> None:
    expect(backlog(admin)).to_have_text("25", timeout=WAIT_MS)
    expect(backlog(admin, OTHER)).to_have_text("0", timeout=WAIT_MS)
    expect(admin.locator("tbody tr[data-site]")).to_have_count(2)
    shot(admin, shots, "fleet")
    admin.click(f'tr[data-site="{SITE}"] a')
    expect(admin.locator("h1")).to_contain_text(SITE)
    expect(admin.locator("dd.backlog")).to_contain_text("25 records")
    expect(admin.locator("svg.chart")).to_have_count(3)
    expect(admin.locator("a", has_text="telemetry")).to_be_visible()  # the central topic it feeds
    assert admin.locator("#no-authorizer").count() == 0  # the authorizer is on
    shot(admin, shots, "site")


def test_the_page_updates_without_a_reload(admin: Any, env: Env) -> None:
    admin.goto(env.broker.console + "/fleet")
    expect(backlog(admin)).to_have_text("25", timeout=WAIT_MS)
    admin.evaluate("window.__notReloaded = true")
    env.publish(10)
    expect(backlog(admin)).to_have_text("35", timeout=WAIT_MS)
    assert admin.evaluate("window.__notReloaded") is True
    assert int(admin.evaluate("document.getElementById('live').dataset.updates")) > 0


def create_topic(page: Any, env: Env, name: str, shots: Path | None = None) -> Any:
    page.goto(env.broker.console + "/topics")
    form = page.locator("#create-topic")
    form.locator("input[name=name]").fill(name)
    form.locator("button[type=submit]").click()
    expect(page.locator("h1")).to_have_text("Confirm: create topic")
    if shots is not None:
        shot(page, shots, "confirm")
    page.click("button.danger")
    return page.locator("#result")


def test_create_topic_is_refused_without_permission(browser: Any, env: Env) -> None:
    viewer = login(browser, env, "viewer")
    result = create_topic(viewer, env, "telemetry")
    expect(result).to_have_text("refused: User:viewer may not CREATE TOPIC 'telemetry'")
    assert "telemetry" not in env.topics()
    viewer.context.close()


def test_create_topic_permitted_and_the_backlog_drains(admin: Any, env: Env, shots: Path) -> None:
    result = create_topic(admin, env, "telemetry", shots)
    expect(result).to_have_text("created topic telemetry with 1 partition")
    assert "telemetry" in env.topics()
    admin.goto(env.broker.console + "/topics")
    expect(admin.locator("a", has_text="telemetry").first).to_be_visible()
    shot(admin, shots, "topics")
    admin.goto(env.broker.console + "/fleet")
    expect(backlog(admin)).to_have_text("0", timeout=WAIT_MS)


def commit(env: Env, group: str, offset: int) -> None:
    c = Consumer({"bootstrap.servers": env.broker.address("PLAINTEXT"), "group.id": group})
    try:
        c.commit(offsets=[TopicPartition("telemetry", 0, offset)], asynchronous=False)
    finally:
        c.close()


def test_a_groups_lag_appears_drains_and_is_reset(admin: Any, env: Env, shots: Path) -> None:
    c = Consumer({"bootstrap.servers": env.broker.address("PLAINTEXT"), "group.id": "peek"})
    _low, end = c.get_watermark_offsets(TopicPartition("telemetry", 0), timeout=10)
    c.close()
    assert end >= 35
    commit(env, "readers", 0)
    admin.goto(env.broker.console + "/groups/readers")
    lag = admin.locator("strong.lag")
    expect(lag).to_have_text(str(end))
    shot(admin, shots, "group")
    commit(env, "readers", end)
    expect(lag).to_have_text("0", timeout=WAIT_MS)  # live, no reload
    form = admin.locator("form[action='/actions/reset-offsets']")
    form.locator("input[name=topic]").fill("telemetry")
    form.locator("input[name=to]").fill("earliest")
    form.locator("button[type=submit]").click()
    expect(admin.locator("h1")).to_have_text("Confirm: reset offsets")
    admin.click("button.danger")
    expect(admin.locator("#result")).to_have_text(
        "group readers: 1 partition of telemetry reset to earliest"
    )
    admin.goto(env.broker.console + "/groups/readers")
    expect(lag).to_have_text(str(end))


def test_the_cluster_page(admin: Any, env: Env, shots: Path) -> None:
    admin.goto(env.broker.console + "/cluster")
    expect(admin.locator("h1")).to_contain_text("Cluster")
    expect(admin.locator("tr[data-node]")).to_have_count(1)
    shot(admin, shots, "cluster")


def test_a_links_page_shows_its_mirror_topic(
    admin: Any, env: Env, source: BrokerProcess, shots: Path
) -> None:
    console_helpers.create_topic(source.bootstrap, MIRRORED)
    p = Producer({"bootstrap.servers": source.bootstrap})
    for i in range(12):
        p.produce(MIRRORED, value=b"order %d" % i)
    assert p.flush(20) == 0
    c = Consumer({"bootstrap.servers": source.bootstrap, "group.id": "billing"})
    c.commit(offsets=[TopicPartition(MIRRORED, 0, 4)], asynchronous=False)
    c.close()
    args = ["create", LINK, "--source", source.bootstrap, "--topics", MIRRORED, "--groups", "bill*"]
    with ThreadPoolExecutor(1) as ex:  # its own event loop: not on Playwright's thread
        r = ex.submit(CliRunner().invoke, link, [*args, "--metadata", env.broker.metadata_url])
        r = r.result()
    assert r.exit_code == 0, r.output
    admin.goto(env.broker.console + "/links")
    admin.click(f'tr[data-link="{LINK}"] a')
    expect(admin.locator("h1")).to_contain_text(LINK)
    # the mirror topic appears and catches up without a reload
    mirror = admin.locator(f'section[data-mirror="{MIRRORED}"]')
    expect(mirror.locator('tr[data-partition="0"] td.mirror-end')).to_have_text(
        "12", timeout=WAIT_MS
    )
    expect(mirror.locator("h2 .pill")).to_have_text("mirroring")
    # the group's offset on the source, synced here: 8 records behind the mirror's end
    expect(admin.locator('tr[data-group="billing"] td.num').last).to_have_text("8", timeout=WAIT_MS)
    shot(admin, shots, "link")


def test_the_transactions_page_shows_an_open_transaction(admin: Any, env: Env, shots: Path) -> None:
    bootstrap = env.broker.address("PLAINTEXT")
    console_helpers.create_topic(bootstrap, "payments")
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": TXN})
    p.init_transactions(20)
    p.begin_transaction()
    p.produce("payments", value=b"charge 42")
    assert p.flush(20) == 0
    admin.goto(env.broker.console + "/transactions")
    row = admin.locator(f'tr[data-txn="{TXN}"]')
    expect(row.locator(".pill")).to_have_text("Ongoing", timeout=WAIT_MS)
    expect(row).to_contain_text("payments-0", timeout=WAIT_MS)
    shot(admin, shots, "transactions")
    p.abort_transaction(20)
    expect(row.locator(".pill")).to_have_text("CompleteAbort", timeout=WAIT_MS)  # live


def test_a_killed_gateway_goes_silent_and_the_other_stays_up(admin: Any, env: Env) -> None:
    admin.goto(env.broker.console + "/fleet")
    row = admin.locator(f'tr[data-site="{SITE}"]')
    other = admin.locator(f'tr[data-site="{OTHER}"]')
    expect(row.locator(".pill")).not_to_have_text("silent")
    up = other.locator(".pill").inner_text().strip()  # idle: plant-2 has nothing to send
    assert up not in ("silent", "stopped")
    env.gw.kill()
    expect(row.locator(".pill")).to_have_text("silent", timeout=WAIT_MS)
    expect(row.locator(".since")).to_contain_text("since")
    # plant-2 still reports: more than three of its intervals passed since plant-1's kill
    expect(other.locator(".pill")).to_have_text(up)
    assert other.locator(".since").count() == 0


def test_a_phone_sized_screen(browser: Any, env: Env, shots: Path) -> None:
    phone = login(browser, env, "admin", viewport={"width": 390, "height": 844}, is_mobile=True)
    row = phone.locator(f'tr[data-site="{SITE}"]')
    expect(row).to_be_visible()
    shot(phone, shots, "fleet-phone")
    # no sideways scrolling; the table is one labelled card per row
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    assert phone.evaluate("getComputedStyle(document.querySelector('thead')).display") == "none"
    label = phone.evaluate(
        "getComputedStyle(document.querySelector('td.backlog'), '::before').content"
    )
    assert label == '"Backlog"'
    for entry in ("Fleet", "Cluster", "Topics", "Groups", "Links", "Transactions"):
        expect(phone.locator("header nav a", has_text=entry)).to_be_visible()
    for page in ("/transactions", f"/links/{LINK}"):
        phone.goto(env.broker.console + page)
        expect(phone.locator("h1")).to_be_visible()
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390, page
    phone.context.close()
