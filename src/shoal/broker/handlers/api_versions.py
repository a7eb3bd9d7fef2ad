"""ApiVersions: what the broker speaks, and the fallback for unknown versions."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.api_versions.v0.response import ApiVersion as ApiVersionV0
from kio.schema.api_versions.v0.response import ApiVersionsResponse as ApiVersionsResponseV0

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.protocol.apis import SUPPORTED
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader

ZERO = datetime.timedelta(0)


async def handle_api_versions(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(18, header.api_version)
    return s.ApiVersionsResponse(
        error_code=ErrorCode.none,
        api_keys=tuple(
            s.ApiVersion(api_key=key, min_version=lo, max_version=hi)
            for key, (_name, lo, hi) in sorted(SUPPORTED.items())
        ),
        throttle_time=ZERO,
    )


def unsupported_version_response() -> Any:
    """What Kafka sends to an ApiVersions request of a version it does not know:
    a v0 body with UNSUPPORTED_VERSION and the supported ranges, so the client
    can retry with a version both sides speak."""
    return ApiVersionsResponseV0(
        error_code=ErrorCode.unsupported_version,
        api_keys=tuple(
            ApiVersionV0(api_key=key, min_version=lo, max_version=hi)  # type: ignore[arg-type]
            for key, (_name, lo, hi) in sorted(SUPPORTED.items())
        ),
    )
