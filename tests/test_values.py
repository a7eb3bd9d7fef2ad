"""`shoal.values.value`: frozen to the type checker, cheap at run time, with
a frozen dataclass's equality and hash."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shoal import values
from shoal.protocol.records import BatchHeader
from shoal.values import value


@value
class _Point:
    x: int
    y: str = "y"


def test_a_value_compares_and_hashes_by_its_fields() -> None:
    a, b, c = _Point(1), _Point(1, "y"), _Point(2)
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert {a: "first", c: "second"}[b] == "first"  # usable as a key, as a frozen one
    assert dataclasses.is_dataclass(a) and dataclasses.replace(a, x=3) == _Point(3)
    with pytest.raises(AttributeError):
        a.z = 1  # type: ignore[attr-defined]  # slots: no attribute beyond the fields


def test_a_batch_header_is_a_value() -> None:
    h = BatchHeader(0, 61, -1, 2, 0, 0, 0, 5, 5, -1, -1, -1, 1)
    assert h == BatchHeader(*dataclasses.astuple(h)) and hash(h) == hash(
        BatchHeader(*dataclasses.astuple(h))
    )
    assert h.size == 61 + 12


def test_the_type_checker_refuses_an_assignment_to_a_field(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        from shoal.values import value

        @value
        class P:
            x: int

        p = P(1)
        p.x = 2
        """
    )
    src = Path(values.__file__).parents[1]  # the tree under test, not an installed copy
    (tmp_path / "mypy.ini").write_text(f"[mypy]\nmypy_path = {src}\n")
    (tmp_path / "frozen.py").write_text(code)
    # In a process of its own: mypy's API changes this one's collector
    # thresholds for good (test_gc_policy.py reads them).
    run = subprocess.run(
        [
            *(sys.executable, "-m", "mypy"),
            *("--config-file", str(tmp_path / "mypy.ini")),
            *("--cache-dir", str(tmp_path / "cache")),
            "--strict",
            str(tmp_path / "frozen.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out, status = run.stdout, run.returncode
    assert status == 1, out
    assert 'Property "x" defined in "P" is read-only' in out, out
