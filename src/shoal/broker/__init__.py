"""The asyncio Kafka server: connections, one handler module per API family."""
