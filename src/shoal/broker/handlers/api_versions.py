"""ApiVersions: what the broker speaks, the features it has (v3+), and the
fallback for unknown versions."""

from __future__ import annotations

import datetime
import time
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

#: feature -> (min, max) level this broker supports. `transaction.version`
#: 2 is KIP-890 part 2; Kafka 4 clients use it when it is finalized at 2.
SUPPORTED_FEATURES = {"transaction.version": (0, 2)}
#: Kafka's epoch of the finalized features is the metadata offset that set
#: them; a client keeps the answer with the highest epoch. The start time
#: grows across restarts, so a level an operator changed is taken up.
FEATURES_EPOCH = int(time.time() * 1000)


def finalized_features(broker: Broker) -> dict[str, int]:
    """The levels in force (`transaction.version`: the broker config)."""
    return {"transaction.version": broker.txn.config.version}


async def handle_api_versions(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(18, header.api_version)
    api_keys = tuple(
        s.ApiVersion(api_key=key, min_version=lo, max_version=hi)
        for key, (_name, lo, hi) in sorted(SUPPORTED.items())
    )
    if header.api_version < 3:
        return s.ApiVersionsResponse(
            error_code=ErrorCode.none, api_keys=api_keys, throttle_time=ZERO
        )
    return s.ApiVersionsResponse(
        error_code=ErrorCode.none,
        api_keys=api_keys,
        throttle_time=ZERO,
        # Kafka leaves out of v3 the features whose minimum is 0 (older
        # clients could not read them, KAFKA-17492) and finalized level 0
        supported_features=tuple(
            s.SupportedFeatureKey(name=name, min_version=lo, max_version=hi)
            for name, (lo, hi) in sorted(SUPPORTED_FEATURES.items())
            if header.api_version >= 4 or lo > 0
        ),
        finalized_features_epoch=FEATURES_EPOCH,
        finalized_features=tuple(
            s.FinalizedFeatureKey(name=name, max_version_level=level, min_version_level=level)
            for name, level in sorted(finalized_features(broker).items())
            if level > 0
        ),
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
