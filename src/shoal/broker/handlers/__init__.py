"""One module per API family. `HANDLERS` maps an API key to its handler.

A handler returns the response body, `None` for no response (acks=0), or a
`Deferred` when the answer must wait (a produce awaiting its WAL commit, a
fetch long-polling) so that the connection can read the next request
meanwhile, while responses still leave in request order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shoal.broker.broker import Broker
from shoal.protocol.headers import RequestHeader
from shoal.values import value


@dataclass(slots=True)
class ConnectionState:
    """What handlers remember about one connection between its requests."""

    #: When the last large fetch without a session was answered
    #: (loop time; see handlers/fetch.py, fetch.sessionless.pace.ms).
    large_fetch_answered: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Client:
    """Who sent a request: for logs, and the authenticated principal and the
    listener it connected on, for authorization and per-listener answers."""

    peer: str
    client_id: str | None
    principal: str = "User:ANONYMOUS"
    listener: str = "PLAINTEXT"
    #: the connection's SaslSession on a SASL listener (for the SASL handlers)
    session: Any = field(default=None, compare=False, repr=False)
    #: the connection's own (kept across `replace` as the client is re-labelled)
    state: ConnectionState = field(default_factory=ConnectionState, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.client_id or '-'}@{self.peer}"


@value
class Deferred:
    result: Awaitable[Any]


Handler = Callable[[Broker, Client, RequestHeader, Any], Awaitable[Any]]


def registry() -> dict[int, Handler]:
    from shoal.broker.handlers import (
        acls,
        api_versions,
        configs,
        consumer_group,
        delete_records,
        describe_cluster,
        describe_topic_partitions,
        fetch,
        groups,
        leader_epoch,
        leaders,
        list_offsets,
        log_dirs,
        metadata,
        offsets,
        produce,
        producer_ids,
        quotas,
        reassignments,
        sasl,
        topics,
        transaction_admin,
        transactions,
        users,
    )

    return {
        0: produce.handle_produce,
        1: fetch.handle_fetch,
        2: list_offsets.handle_list_offsets,
        3: metadata.handle_metadata,
        8: offsets.handle_offset_commit,
        9: offsets.handle_offset_fetch,
        10: groups.handle_find_coordinator,
        11: groups.handle_join_group,
        12: groups.handle_heartbeat,
        13: groups.handle_leave_group,
        14: groups.handle_sync_group,
        15: groups.handle_describe_groups,
        16: groups.handle_list_groups,
        17: sasl.handle_sasl_handshake,
        18: api_versions.handle_api_versions,
        19: topics.handle_create_topics,
        20: topics.handle_delete_topics,
        21: delete_records.handle_delete_records,
        22: producer_ids.handle_init_producer_id,
        23: leader_epoch.handle_offset_for_leader_epoch,
        24: transactions.handle_add_partitions_to_txn,
        25: transactions.handle_add_offsets_to_txn,
        26: transactions.handle_end_txn,
        27: transaction_admin.handle_write_txn_markers,
        28: transactions.handle_txn_offset_commit,
        29: acls.handle_describe_acls,
        30: acls.handle_create_acls,
        31: acls.handle_delete_acls,
        32: configs.handle_describe_configs,
        33: configs.handle_alter_configs,
        34: log_dirs.handle_alter_replica_log_dirs,
        35: log_dirs.handle_describe_log_dirs,
        36: sasl.handle_sasl_authenticate,
        37: topics.handle_create_partitions,
        42: groups.handle_delete_groups,
        43: leaders.handle_elect_leaders,
        44: configs.handle_incremental_alter_configs,
        45: reassignments.handle_alter_partition_reassignments,
        46: reassignments.handle_list_partition_reassignments,
        47: offsets.handle_offset_delete,
        48: quotas.handle_describe_client_quotas,
        49: quotas.handle_alter_client_quotas,
        50: users.handle_describe_user_scram_credentials,
        51: users.handle_alter_user_scram_credentials,
        55: leaders.handle_describe_quorum,
        60: describe_cluster.handle_describe_cluster,
        61: transaction_admin.handle_describe_producers,
        65: transaction_admin.handle_describe_transactions,
        66: transaction_admin.handle_list_transactions,
        68: consumer_group.handle_consumer_group_heartbeat,
        69: consumer_group.handle_consumer_group_describe,
        74: configs.handle_list_config_resources,
        75: describe_topic_partitions.handle_describe_topic_partitions,
    }
