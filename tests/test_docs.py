"""The README stays true to the code: every configuration key and every
supported API is documented."""

from __future__ import annotations

from pathlib import Path

from shoal.config import BROKER_KEYS, TOPIC_KEYS
from shoal.protocol.apis import SUPPORTED

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    missing = [k for k in [*BROKER_KEYS, *TOPIC_KEYS] if f"`{k}`" not in README]
    assert not missing, f"README lacks {missing}"


def test_every_api_is_documented() -> None:
    missing = [name for name, _lo, _hi in SUPPORTED.values() if f"| {name} |" not in README]
    assert not missing, f"README's API table lacks {missing}"
