"""Migration links: offset-preserving mirroring from another Kafka cluster."""
