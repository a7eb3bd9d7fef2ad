"""Build kio response entities for whichever version a client asked for.

kio generates one module per API version, each with its own nested classes and
a field set that grows with the version. Handlers describe a response once, as
a superset of fields; `Schema` picks the classes of the right version and drops
the fields that version does not have.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from shoal.protocol.apis import response_type

_FIELDS: dict[str, frozenset[str]] = {}


def _field_names(cls: type[Any]) -> frozenset[str]:
    key = f"{cls.__module__}.{cls.__qualname__}"
    names = _FIELDS.get(key)
    if names is None:
        names = _FIELDS[key] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def make(cls: type[Any], **fields: Any) -> Any:
    names = _field_names(cls)
    return cls(**{k: v for k, v in fields.items() if k in names})


def has_field(cls: type[Any], name: str) -> bool:
    return name in _field_names(cls)


class Schema:
    """`Schema(api_key, version).Name(**fields)` builds `Name` of that version."""

    __slots__ = ("module", "version")

    def __init__(self, api_key: int, version: int) -> None:
        self.version = version
        self.module = sys.modules[response_type(api_key, version).__module__]

    def __getattr__(self, name: str) -> Any:
        cls = getattr(self.module, name)

        def build(**fields: Any) -> Any:
            return make(cls, **fields)

        return build

    def has(self, cls_name: str, field: str) -> bool:
        return has_field(getattr(self.module, cls_name), field)
