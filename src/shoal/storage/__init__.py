"""The log engine on object storage. Knows streams of opaque record batches
with offsets; nothing of Kafka's APIs."""
