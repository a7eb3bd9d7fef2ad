"""A real MQTT broker for the edge tests: amqtt (from PyPI) in a subprocess.

Sessions need a user name (amqtt keeps messages for offline persistent
sessions only when the client is not anonymous), so anonymous access is off
and any user name is accepted.

`--ack-log FILE` records every PUBACK the broker receives from a subscriber,
as `client-id <TAB> topic <TAB> payload-hex`: it is how a test knows exactly
which messages the gateway acknowledged (amqtt itself forgets a message that
was in flight to a subscriber that disconnects, so the devices' own acks are
not the gateway's promise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def serve(port: int, ack_log: str | None, tls: list[str] | None = None) -> None:
    from amqtt.broker import Broker
    from amqtt.mqtt.protocol.handler import ProtocolHandler

    if ack_log:
        fh = open(ack_log, "a", buffering=1)
        original = ProtocolHandler.handle_puback

        async def handle_puback(self: Any, puback: Any) -> None:
            pid = puback.variable_header.packet_id
            msg = self.session.inflight_out.get(pid) if self.session else None
            if msg is not None:
                fh.write(f"{self.session.client_id}\t{msg.topic}\t{bytes(msg.data).hex()}\n")
            await original(self, puback)

        ProtocolHandler.handle_puback = handle_puback  # type: ignore[method-assign]

    listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}}
    if tls:  # a second listener with TLS: port, server PEM (key + chain), client CA
        listeners["tls"] = {
            "type": "tcp",
            "bind": f"127.0.0.1:{tls[0]}",
            "ssl": True,
            "certfile": tls[1],
            "keyfile": tls[1],
            "cafile": tls[2],
        }
    config = {
        "listeners": listeners,
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
        },
    }

    async def main() -> None:
        broker = Broker(config)
        await broker.start()
        print("mqtt: ready", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


class MqttBroker:
    """`tls` = (server PEM with key and chain, CA of client certificates): a
    TLS listener on `tls_port` beside the plain one (amqtt verifies a client
    certificate when one is sent, and does not require one)."""

    def __init__(
        self, workdir: Path, port: int | None = None, tls: tuple[Path, Path] | None = None
    ) -> None:
        from harness import free_port

        self.port = port or free_port()
        self.tls = tls
        self.tls_port = free_port() if tls else None
        self.workdir = workdir
        self.ack_log = workdir / f"mqtt-{self.port}-acks.log"
        self.log_path = workdir / f"mqtt-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> MqttBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--port",
                    str(self.port),
                    "--ack-log",
                    str(self.ack_log),
                    *(
                        ["--tls", str(self.tls_port), str(self.tls[0]), str(self.tls[1])]
                        if self.tls
                        else []
                    ),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"amqtt exited:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("amqtt did not start")

    def acked(self, client_id: str) -> list[tuple[str, bytes]]:
        """(topic, payload) of every message `client_id` acknowledged, in order."""
        out = []
        if not self.ack_log.exists():
            return out
        for line in self.ack_log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[0] == client_id:
                out.append((parts[1], bytes.fromhex(parts[2])))
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ack-log")
    ap.add_argument("--tls", nargs=3, metavar=("PORT", "SERVER_PEM", "CA"))
    a = ap.parse_args()
    serve(a.port, a.ack_log, a.tls)
