"""Edge gateway: MQTT, HTTP and Kafka ingest into a durable local log, forwarded
to a central Kafka-compatible cluster through outages (see docs/EDGE.md)."""
