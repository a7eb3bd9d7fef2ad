"""Typed protocol errors; each maps to the Kafka error code a client expects."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

__all__ = ["ErrorCode", "FrameError", "KafkaError", "RequestDecodeError"]


class KafkaError(Exception):
    """An error that the protocol edge turns into a Kafka error code."""

    def __init__(self, code: ErrorCode, message: str = "") -> None:
        super().__init__(message or code.name)
        self.code = code


class FrameError(Exception):
    """The byte stream is unusable: the connection must be closed."""


class RequestDecodeError(FrameError):
    """A frame whose header or body cannot be decoded."""
