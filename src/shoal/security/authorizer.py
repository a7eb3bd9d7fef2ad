"""The ACL authorizer: Kafka's decision rules over an index built for speed.

Rules (Kafka's): super users may do anything; a DENY that matches wins; an
ALLOW matches its operation, ALL, or an operation that implies the one asked
(READ/WRITE/DELETE/ALTER imply DESCRIBE, ALTER_CONFIGS implies
DESCRIBE_CONFIGS); a resource no ACL names at all follows
`allow.everyone.if.no.acl.found`.

Speed: a produce asks once per partition, so a decision is one dict lookup
when cached. On a miss, literal ACLs are found by (type, name) and prefixed
ones by probing the name's prefixes at the lengths that prefixed ACLs of that
type have (a handful), never by scanning every ACL. Any change replaces the
index and drops the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

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

log = logging.getLogger("shoal.authorizer")

CACHE_MAX = 100_000  # decisions kept before the cache starts over


def parse_super_users(value: str) -> frozenset[str]:
    """`super.users` is `;`-separated, as in Kafka: `User:admin;User:ops`."""
    return frozenset(p.strip() for p in value.split(";") if p.strip())


@dataclass(slots=True)
class _Index:
    literal: dict[tuple[ResourceType, str], list[AclBinding]] = field(default_factory=dict)
    prefixed: dict[ResourceType, dict[str, list[AclBinding]]] = field(default_factory=dict)
    prefix_lengths: dict[ResourceType, list[int]] = field(default_factory=dict)
    # For decisions by resource type (authorize_any): ACLs by (type, principal).
    by_principal: dict[tuple[ResourceType, str], list[AclBinding]] = field(default_factory=dict)
    types: set[ResourceType] = field(default_factory=set)

    @classmethod
    def build(cls, acls: Iterable[AclBinding]) -> _Index:
        index = cls()
        for acl in acls:
            index.types.add(acl.resource_type)
            index.by_principal.setdefault((acl.resource_type, acl.principal), []).append(acl)
            if acl.pattern_type == PatternType.PREFIXED:
                index.prefixed.setdefault(acl.resource_type, {}).setdefault(
                    acl.resource_name, []
                ).append(acl)
            else:
                index.literal.setdefault((acl.resource_type, acl.resource_name), []).append(acl)
        for rtype, by_prefix in index.prefixed.items():
            index.prefix_lengths[rtype] = sorted({len(p) for p in by_prefix})
        return index

    def matching(self, rtype: ResourceType, name: str) -> list[AclBinding]:
        """Every ACL whose resource pattern covers this resource."""
        out: list[AclBinding] = []
        hit = self.literal.get((rtype, name))
        if hit:
            out.extend(hit)
        if name != WILDCARD:
            hit = self.literal.get((rtype, WILDCARD))
            if hit:
                out.extend(hit)
        by_prefix = self.prefixed.get(rtype)
        if by_prefix:
            for n in self.prefix_lengths[rtype]:
                if n > len(name):
                    break
                hit = by_prefix.get(name[:n])
                if hit:
                    out.extend(hit)
        return out


class Authorizer:
    """Decides (principal, host, operation, resource) against the ACLs it holds.

    Disabled (no `authorizer.class.name`), it allows everything, as Kafka does
    without an authorizer.
    """

    def __init__(
        self,
        enabled: bool,
        super_users: frozenset[str] = frozenset(),
        allow_if_no_acl: bool = False,
    ) -> None:
        self.enabled = enabled
        self.super_users = super_users
        self.allow_if_no_acl = allow_if_no_acl
        self.version = -1  # of the ACLs loaded from the metadata store
        self._acls: frozenset[AclBinding] = frozenset()
        self._index = _Index()
        self._cache: dict[tuple[str, str, AclOperation, ResourceType, str], bool] = {}

    @property
    def acls(self) -> frozenset[AclBinding]:
        return self._acls

    def replace(self, acls: Iterable[AclBinding], version: int = -1) -> None:
        self._acls = frozenset(acls)
        self._index = _Index.build(self._acls)
        self._cache = {}
        self.version = version

    def authorize(
        self, principal: str, host: str, op: AclOperation, rtype: ResourceType, name: str
    ) -> bool:
        if not self.enabled:
            return True
        return self._decide(principal, host, op, rtype, name)

    def authorize_peer(
        self, principal: str, peer: str, op: AclOperation, rtype: ResourceType, name: str
    ) -> bool:
        """`authorize` for a connection's `ADDRESS:PORT`, cached: the address is
        only taken apart when the decision is not in the cache yet."""
        if not self.enabled:
            return True
        key = (principal, peer, op, rtype, name)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(principal, peer_host(peer), op, rtype, name)
            if len(self._cache) >= CACHE_MAX:
                self._cache = {}
            self._cache[key] = decision
        return decision

    def authorize_any(
        self, principal: str, host: str, op: AclOperation, rtype: ResourceType
    ) -> bool:
        """Kafka's authorizeByResourceType: may the principal do `op` on some
        resource of this type? (InitProducerId without a transactional id
        needs IDEMPOTENT_WRITE on the cluster or WRITE on any topic.) An ALLOW
        counts unless a DENY of the same scope or wider (the wildcard, the
        empty prefix) takes it back."""
        if not self.enabled or principal in self.super_users:
            return True
        if rtype not in self._index.types:
            return self.allow_if_no_acl
        allow_ops = IMPLIED_BY.get(op, frozenset((op,)))
        allowed = False
        by_principal = self._index.by_principal
        for acl in (
            *by_principal.get((rtype, principal), ()),
            *by_principal.get((rtype, WILDCARD_PRINCIPAL), ()),
        ):
            if acl.host != host and acl.host != WILDCARD:
                continue
            if acl.permission == Permission.DENY:
                if acl.operation in (op, AclOperation.ALL) and (
                    (acl.pattern_type == PatternType.LITERAL and acl.resource_name == WILDCARD)
                    or (acl.pattern_type == PatternType.PREFIXED and acl.resource_name == "")
                ):
                    return False
            elif acl.operation == AclOperation.ALL or acl.operation in allow_ops:
                allowed = True
        return allowed

    def _decide(
        self, principal: str, host: str, op: AclOperation, rtype: ResourceType, name: str
    ) -> bool:
        if principal in self.super_users:
            return True
        acls = self._index.matching(rtype, name)
        if not acls:
            return self.allow_if_no_acl
        allow_ops = IMPLIED_BY.get(op, frozenset((op,)))
        allowed = False
        for acl in acls:
            if acl.principal != principal and acl.principal != WILDCARD_PRINCIPAL:
                continue
            if acl.host != host and acl.host != WILDCARD:
                continue
            if acl.permission == Permission.DENY:
                if acl.operation == op or acl.operation == AclOperation.ALL:
                    return False
            elif acl.operation == AclOperation.ALL or acl.operation in allow_ops:
                allowed = True
        return allowed


def peer_host(peer: str) -> str:
    """`ADDRESS:PORT` -> `ADDRESS`, the host ACLs match against."""
    host = peer.rpartition(":")[0] or peer
    return host.strip("[]")
