"""Kafka's ACL model: resource patterns, entries, bindings and filters.

The enums carry Kafka's wire codes, so a binding goes to and from the
CreateAcls/DescribeAcls/DeleteAcls schemas unchanged. Validation follows
Kafka's: what a binding may hold (LITERAL or PREFIXED, a real operation and
permission, `Type:name` principals, `*` or an IP as host) and what a filter may
hold (also ANY and MATCH, but nothing UNKNOWN).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple, TypeVar

WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"
CLUSTER_NAME = "kafka-cluster"
_E = TypeVar("_E", bound=IntEnum)


class AclError(ValueError):
    """A binding or filter Kafka would refuse (INVALID_REQUEST); names the bad value."""


class ResourceType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(IntEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class Permission(IntEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


# Kafka: an ALLOW for any of these operations also allows the key.
IMPLIED_BY: dict[AclOperation, frozenset[AclOperation]] = {
    AclOperation.DESCRIBE: frozenset(
        {
            AclOperation.DESCRIBE,
            AclOperation.READ,
            AclOperation.WRITE,
            AclOperation.DELETE,
            AclOperation.ALTER,
        }
    ),
    AclOperation.DESCRIBE_CONFIGS: frozenset(
        {AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS}
    ),
}


class AclBinding(NamedTuple):
    """One ACL: a resource pattern and an access control entry."""

    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: AclOperation
    permission: Permission

    @classmethod
    def of(
        cls,
        resource_type: int,
        resource_name: str,
        pattern_type: int,
        principal: str,
        host: str,
        operation: int,
        permission: int,
    ) -> AclBinding:
        """From wire or storage values (unknown codes become UNKNOWN)."""
        return cls(
            _enum(ResourceType, resource_type),
            resource_name,
            _enum(PatternType, pattern_type),
            principal,
            host,
            _enum(AclOperation, operation),
            _enum(Permission, permission),
        )

    def validate(self) -> AclBinding:
        """Raise AclError where Kafka's CreateAcls would refuse this binding."""
        if self.resource_type in (ResourceType.UNKNOWN, ResourceType.ANY):
            raise AclError(f"invalid resource type {self.resource_type.name}")
        if self.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
            raise AclError(
                f"invalid pattern type {self.pattern_type.name}: use LITERAL or PREFIXED"
            )
        if self.operation in (AclOperation.UNKNOWN, AclOperation.ANY):
            raise AclError(f"invalid operation {self.operation.name}")
        if self.permission in (Permission.UNKNOWN, Permission.ANY):
            raise AclError(f"invalid permission type {self.permission.name}")
        if not self.resource_name:
            raise AclError("resource name must not be empty")
        if self.resource_type == ResourceType.CLUSTER and self.resource_name != CLUSTER_NAME:
            raise AclError(
                f"invalid cluster resource name {self.resource_name!r}: "
                f"the only valid name is {CLUSTER_NAME}"
            )
        check_principal(self.principal)
        check_host(self.host)
        return self


@dataclass(frozen=True, slots=True)
class AclFilter:
    """What DescribeAcls and DeleteAcls select; None matches anything."""

    resource_type: ResourceType = ResourceType.ANY
    resource_name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: AclOperation = AclOperation.ANY
    permission: Permission = Permission.ANY

    @classmethod
    def of(
        cls,
        resource_type: int,
        resource_name: str | None,
        pattern_type: int,
        principal: str | None,
        host: str | None,
        operation: int,
        permission: int,
    ) -> AclFilter:
        return cls(
            _enum(ResourceType, resource_type),
            resource_name,
            _enum(PatternType, pattern_type),
            principal,
            host,
            _enum(AclOperation, operation),
            _enum(Permission, permission),
        )

    def validate(self) -> AclFilter:
        for value in (self.resource_type, self.pattern_type, self.operation, self.permission):
            if value.name == "UNKNOWN":
                raise AclError(f"filter has an unknown {type(value).__name__}")
        return self

    def matches(self, acl: AclBinding) -> bool:
        """Kafka's AclBindingFilter.matches, MATCH included (a literal name
        matches the wildcard and every prefix that starts it)."""
        if self.resource_type != ResourceType.ANY and self.resource_type != acl.resource_type:
            return False
        if self.pattern_type not in (PatternType.ANY, PatternType.MATCH, acl.pattern_type):
            return False
        if self.principal is not None and self.principal != acl.principal:
            return False
        if self.host is not None and self.host != acl.host:
            return False
        if self.operation != AclOperation.ANY and self.operation != acl.operation:
            return False
        if self.permission != Permission.ANY and self.permission != acl.permission:
            return False
        name = self.resource_name
        if name is None:
            return True
        if self.pattern_type in (PatternType.ANY, acl.pattern_type):
            return name == acl.resource_name
        if acl.pattern_type == PatternType.LITERAL:
            return name == acl.resource_name or acl.resource_name == WILDCARD
        return name.startswith(acl.resource_name)


def check_principal(principal: str) -> str:
    """Kafka's `Type:name`, both parts non-empty."""
    kind, sep, name = principal.partition(":")
    if not sep or not kind or not name:
        raise AclError(f"invalid principal {principal!r}: expected Type:name, e.g. User:alice")
    return principal


def check_host(host: str) -> str:
    if host == WILDCARD:
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise AclError(f"invalid host {host!r}: expected * or an IP address") from None
    return host


def _enum(kind: type[_E], value: int) -> _E:
    try:
        return kind(int(value))
    except ValueError:
        return kind(0)
