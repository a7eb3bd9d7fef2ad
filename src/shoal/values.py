"""Immutable records for the produce path, cheap to build.

A `@dataclass(frozen=True)` sets each field through `object.__setattr__` in
its `__init__`: a record batch's 13-field header costs 1.3 µs to build, the
same class unfrozen 0.17 µs, and a one-record produce request builds about a
dozen such records (its header, the batch's, the checked batch, the answer,
the WAL object's ranges). A `value` class is frozen to the type checker (mypy
reports an assignment to a field as an error) and a plain slotted dataclass
at run time, with a frozen dataclass's equality and hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value(cls: type[T]) -> type[T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)
