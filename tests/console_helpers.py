"""A broker with the web console on, authorization on, two SCRAM users
(`admin`, a super user, and `viewer`, with no ACLs), and edge gateways that
report to it: shared by the console's HTTP and browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from edge_harness import GatewayProcess, gateway_config
from harness import BrokerProcess, free_port
from security_helpers import PASSWORD, SecureBroker, store_users

REPORT_MS = 500  # site report interval of the test gateways: silent after 3.5 s


class ConsoleBroker(SecureBroker):
    console_port: int

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"


def console_broker(tmp: Path, **extra: Any) -> ConsoleBroker:
    """Gateways connect as User:ANONYMOUS on PLAINTEXT, a super user here so
    their uplinks need no ACLs; central topics are not auto-created, so a
    gateway's backlog stays until a topic is created (from the console)."""
    port = free_port()
    b = ConsoleBroker(
        tmp / "data",
        {
            "console.listen": f"127.0.0.1:{port}",
            "authorizer.class.name": "shoal",
            "super.users": "User:admin;User:ANONYMOUS",
            "auto.create.topics.enable": False,
            **extra,
        },
        ("PLAINTEXT",),
    )
    b.console_port = port
    b.start()
    store_users(b.metadata_url, ("admin", "viewer"))
    return b


def gateway(
    tmp: Path, broker: SecureBroker, site: str, report_ms: int = REPORT_MS, **kw: Any
) -> GatewayProcess:
    cfg = gateway_config(
        tmp / site,
        site=site,
        central=broker.address("PLAINTEXT"),
        uplink={"report_interval_ms": report_ms},
        **kw,
    )
    return GatewayProcess(tmp / site, cfg)


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """A topic on the link's source or on the console's broker."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(20)


__all__ = ["PASSWORD", "REPORT_MS", "ConsoleBroker", "console_broker", "create_topic", "gateway"]


@pytest.fixture(scope="module")
def starting_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Future[BrokerProcess]]:
    """A second broker, the source of a migration link into the console's:
    started in the background while `env` sets up."""
    b = BrokerProcess(tmp_path_factory.mktemp("console_source") / "data", target="shoal")
    with ThreadPoolExecutor(1) as ex:
        yield ex.submit(b.start)
    b.stop()


@pytest.fixture(scope="module")
def source(starting_source: Future[BrokerProcess]) -> BrokerProcess:
    return starting_source.result()
