#!/usr/bin/env python3
"""Authorizer micro-benchmark: 10,000 ACLs (1,000 sites x 10), Kafka's rules.

Measures, in one process:
- building the index from 10,000 ACLs (what every ACL change costs a broker);
- a decision through `Broker.authorize` (what a produce pays per partition):
  warm (the decision cache hit, the steady state of a producer) and cold (every
  decision computed: the cache dropped before each one);
- the same cold decision by a linear scan over all ACLs, the design the index
  replaces, for scale;

With --produce, end to end as well: two brokers run side by side, one without
an authorizer and one with the 10,000 ACLs plus the bench client's own
(User:ANONYMOUS may do anything on every topic, group and the cluster, so each
produce is decided against the full index), and bench/broker_bench.py takes
turns between them (flat-out produce, phase (a); extra arguments go to it).

    .venv/bin/python bench/acl_bench.py [--sites 1000] [--seconds 2]
    .venv/bin/python bench/acl_bench.py --produce -- --repeat 3 --duration 15

Prints markdown tables for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shoal.broker.broker import Broker
from shoal.security.acls import (
    IMPLIED_BY,
    WILDCARD,
    WILDCARD_PRINCIPAL,
    AclBinding,
    AclOperation,
    PatternType,
    Permission,
    ResourceType,
)
from shoal.security.authorizer import Authorizer

Op, RT, PT, P = AclOperation, ResourceType, PatternType, Permission


def site_acls(site: int) -> list[AclBinding]:
    """The per-site recipe of docs/SECURITY.md, widened to ten ACLs."""
    who = f"User:plant-{site}"
    prefix = f"plant-{site}."
    return [
        AclBinding(RT.TOPIC, prefix, PT.PREFIXED, who, "*", Op.WRITE, P.ALLOW),
        AclBinding(RT.TOPIC, prefix, PT.PREFIXED, who, "*", Op.CREATE, P.ALLOW),
        AclBinding(RT.TOPIC, prefix, PT.PREFIXED, who, "*", Op.DESCRIBE, P.ALLOW),
        AclBinding(RT.TOPIC, prefix + "secrets", PT.LITERAL, who, "*", Op.ALL, P.DENY),
        AclBinding(RT.TOPIC, f"commands.plant-{site}", PT.LITERAL, who, "*", Op.READ, P.ALLOW),
        AclBinding(RT.GROUP, prefix, PT.PREFIXED, who, "*", Op.READ, P.ALLOW),
        AclBinding(RT.GROUP, prefix, PT.PREFIXED, who, "*", Op.DESCRIBE, P.ALLOW),
        AclBinding(RT.TRANSACTIONAL_ID, prefix, PT.PREFIXED, who, "*", Op.WRITE, P.ALLOW),
        AclBinding(RT.TOPIC, prefix, PT.PREFIXED, who, f"10.{site % 250}.0.1", Op.READ, P.ALLOW),
        AclBinding(RT.CLUSTER, "kafka-cluster", PT.LITERAL, who, "*", Op.IDEMPOTENT_WRITE, P.ALLOW),
    ]


def linear_decide(
    acls: list[AclBinding],
    principal: str,
    host: str,
    op: AclOperation,
    rtype: ResourceType,
    name: str,
) -> bool:
    """The same rules by scanning every ACL: the baseline the index replaces."""
    allow_ops = IMPLIED_BY.get(op, frozenset((op,)))
    found = allowed = False
    for acl in acls:
        if acl.resource_type != rtype:
            continue
        if acl.pattern_type == PT.LITERAL:
            if acl.resource_name != name and acl.resource_name != WILDCARD:
                continue
        elif not name.startswith(acl.resource_name):
            continue
        found = True
        if acl.principal != principal and acl.principal != WILDCARD_PRINCIPAL:
            continue
        if acl.host != host and acl.host != WILDCARD:
            continue
        if acl.permission == P.DENY:
            if acl.operation in (op, Op.ALL):
                return False
        elif acl.operation == Op.ALL or acl.operation in allow_ops:
            allowed = True
    return allowed if found else False


def timed(fn: Callable[[int], Any], n: int) -> float:
    """Seconds per call of fn(i) over n calls."""
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n


def calls_for(seconds: float, fn: Callable[[int], Any]) -> int:
    n = 1000
    while timed(fn, n) * n < seconds / 4:
        n *= 2
    return n * 4


ROOT = Path(__file__).resolve().parent.parent


def _harness() -> Any:
    spec = importlib.util.spec_from_file_location("acl_bench_harness", ROOT / "tests/harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _create_acls(bootstrap: str, acls: list[AclBinding]) -> None:
    from confluent_kafka import admin as ca

    admin = ca.AdminClient({"bootstrap.servers": bootstrap})
    for start in range(0, len(acls), 1000):
        chunk = [
            ca.AclBinding(
                ca.ResourceType(int(a.resource_type)),
                a.resource_name,
                ca.ResourcePatternType(int(a.pattern_type)),
                a.principal,
                a.host,
                ca.AclOperation(int(a.operation)),
                ca.AclPermissionType(int(a.permission)),
            )
            for a in acls[start : start + 1000]
        ]
        for fut in admin.create_acls(chunk, request_timeout=60).values():
            fut.result(60)


def produce_bench(sites: int, bench_args: list[str]) -> None:
    """Two brokers, no authorizer and 10,000 ACLs, benched in turns."""
    harness = _harness()
    work = Path(tempfile.mkdtemp(prefix="acl-bench-"))
    anon = "User:ANONYMOUS"
    acls = [a for s in range(sites) for a in site_acls(s)]
    acls += [
        AclBinding(RT.TOPIC, "*", PT.LITERAL, anon, "*", Op.ALL, P.ALLOW),
        AclBinding(RT.GROUP, "*", PT.LITERAL, anon, "*", Op.ALL, P.ALLOW),
        AclBinding(RT.CLUSTER, "kafka-cluster", PT.LITERAL, anon, "*", Op.ALL, P.ALLOW),
    ]
    authz = {"SHOAL_AUTHORIZER_CLASS_NAME": "shoal"}
    plain = harness.BrokerProcess(work / "noauth").start()
    # Load the ACLs as a super user, then restart without one.
    acl = harness.BrokerProcess(work / "acls", env={**authz, "SHOAL_SUPER_USERS": anon}).start()
    try:
        _create_acls(acl.bootstrap, acls)
        acl.stop()
        acl.env = dict(authz)
        acl.start()
        print(f"{len(acls):,} ACLs loaded; brokers: {plain.bootstrap} (none), {acl.bootstrap}")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench/broker_bench.py"),
                "--bootstrap",
                f"no-authorizer={plain.bootstrap}",
                "--bootstrap",
                f"acls-10k={acl.bootstrap}",
                "--fixed-fraction",
                "0",
                *bench_args,
            ],
            check=True,
        )
    finally:
        plain.stop()
        acl.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--produce", action="store_true", help="end to end, see above")
    args, rest = ap.parse_known_args()
    if args.produce:
        produce_bench(args.sites, [a for a in rest if a != "--"])
        return
    rng = random.Random(args.seed)
    acls = [a for s in range(args.sites) for a in site_acls(s)]

    authz = Authorizer(True, frozenset({"User:admin"}), False)
    start = time.perf_counter()
    authz.replace(acls)
    build_s = time.perf_counter() - start
    broker: Any = SimpleNamespace(authorizer=authz)

    # Requests: a site writing one of 10 topics of its own (allowed) or of
    # another site (denied), from its own connection.
    reqs = []
    for _ in range(20_000):
        site = rng.randrange(args.sites)
        target = site if rng.random() < 0.9 else rng.randrange(args.sites)
        client = SimpleNamespace(
            principal=f"User:plant-{site}", peer=f"10.{site % 250}.0.1:{40000 + site}"
        )
        reqs.append((client, f"plant-{target}.sensor-{rng.randrange(10)}", site == target))
    for client, topic, expected in reqs[:2000]:
        got = Broker.authorize(broker, client, Op.WRITE, RT.TOPIC, topic, False)
        assert got == expected, (
            client.principal,
            topic,
        )
        host = client.peer.rpartition(":")[0]
        assert linear_decide(acls, client.principal, host, Op.WRITE, RT.TOPIC, topic) == got

    def warm(i: int) -> bool:
        client, topic, _ = reqs[i % len(reqs)]
        return Broker.authorize(broker, client, Op.WRITE, RT.TOPIC, topic, False)

    def cold(i: int) -> bool:
        authz._cache.clear()
        return warm(i)

    def clear_only(i: int) -> None:
        authz._cache.clear()

    def linear(i: int) -> bool:
        client, topic, _ = reqs[i % len(reqs)]
        host = client.peer.rpartition(":")[0]
        return linear_decide(acls, client.principal, host, Op.WRITE, RT.TOPIC, topic)

    off = Authorizer(False)
    broker_off: Any = SimpleNamespace(authorizer=off)

    def disabled(i: int) -> bool:
        client, topic, _ = reqs[i % len(reqs)]
        return Broker.authorize(broker_off, client, Op.WRITE, RT.TOPIC, topic, False)

    for client, topic, _ in reqs:  # fill the cache
        Broker.authorize(broker, client, Op.WRITE, RT.TOPIC, topic, False)
    results: dict[str, float] = {}

    def by_type(i: int) -> bool:
        client, _topic, _ = reqs[i % len(reqs)]
        return Broker.authorize_any(broker, client, Op.WRITE, RT.TOPIC)

    for name, fn in [
        ("no authorizer", disabled),
        ("warm (cache hit)", warm),
        ("cold (index)", cold),
        ("linear scan", linear),
        ("WRITE on any topic (InitProducerId)", by_type),
    ]:
        results[name] = timed(fn, calls_for(args.seconds, fn))
    results["cold (index)"] -= timed(clear_only, 200_000)

    print(
        f"{len(acls):,} ACLs ({args.sites:,} sites x 10); index built in "
        f"{build_s * 1000:.1f} ms; Python {platform.python_version()} on {platform.machine()}, "
        f"{platform.processor() or 'cpu'}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print()
    print("| decision | µs per decision | decisions/s (one core) |")
    print("| --- | ---: | ---: |")
    for name, sec in results.items():
        print(f"| {name} | {sec * 1e6:.2f} | {1 / sec:,.0f} |")


if __name__ == "__main__":
    main()
