"""InitProducerId: ids for idempotent and transactional producers.

A fresh producer gets a new id at epoch 0. A producer that sends its current
id and epoch (KIP-360, after an error it cannot otherwise recover from) keeps
its id with the epoch bumped, which resets its sequences on every partition.
With a transactional id the transaction coordinator answers (shoal.txn): the
id keeps its producer id, and each new incarnation bumps the epoch, fencing
the previous one after aborting what it left open.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.handlers.transactions import fenced_code, may_write_txn, run
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.producer_ids")
MAX_EPOCH = 32767


async def handle_init_producer_id(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(22, header.api_version)
    code, pid, epoch = ErrorCode.none, -1, -1
    if body.transactional_id is not None:
        tid = body.transactional_id
        out: list[tuple[int, int]] = []

        async def init() -> None:
            timeout = body.transaction_timeout
            out.append(
                await broker.txn.init_producer_id(
                    tid,
                    int(timeout.total_seconds() * 1000),
                    int(getattr(body, "producer_id", -1)),
                    int(getattr(body, "producer_epoch", -1)),
                    fenced_code(header),
                )
            )

        if not may_write_txn(broker, client, tid):
            code = ErrorCode.transactional_id_authorization_failed
        else:
            code = await run(broker, client, "InitProducerId", tid, init())
            if out:
                pid, epoch = out[0]
    elif not broker.authorize(
        client, AclOperation.IDEMPOTENT_WRITE, ResourceType.CLUSTER, CLUSTER_NAME
    ) and not broker.authorize_any(client, AclOperation.WRITE, ResourceType.TOPIC):
        # Kafka: IDEMPOTENT_WRITE on the cluster, or WRITE on any topic.
        code = ErrorCode.cluster_authorization_failed
    else:
        known_pid = int(getattr(body, "producer_id", -1))
        known_epoch = int(getattr(body, "producer_epoch", -1))
        if known_pid >= 0 and 0 <= known_epoch < MAX_EPOCH - 1:
            pid, epoch = known_pid, known_epoch + 1
        else:
            pid, epoch = await broker.producer_ids.allocate(), 0
        log.info("producer id %d epoch %d for %s", pid, epoch, client)
    return s.InitProducerIdResponse(
        throttle_time=datetime.timedelta(0),
        error_code=code,
        producer_id=pid,
        producer_epoch=epoch,
    )
