"""Tables printed to a pipe or a file keep every cell whole (rich would cut them
to 80 columns with "…"), so scripts and logs see what a wide terminal shows."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from shoal.cli import cli

PROFILE = Path(__file__).resolve().parent.parent / "profiles" / "iot-fleet.toml"


def test_cost_table_is_not_cut_in_a_pipe() -> None:
    result = CliRunner().invoke(cli, ["cost", "--profile", str(PROFILE)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "…" not in out
    header = next(line for line in out.splitlines() if "┃ scenario" in line)
    for column in ("brokers", "compute", "storage", "network", "requests", "total", "vs RF=3"):
        assert column in header, header
    assert any("reconnect burst" in line for line in out.splitlines())
    assert max(len(line) for line in out.splitlines()) > 80
