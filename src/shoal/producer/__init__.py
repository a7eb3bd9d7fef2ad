"""Producer ids and idempotence (transactions later).

Sequence checks live with the stream they guard (storage.producers), so that
they are persisted atomically with the data; this package hands out ids.
"""
