"""The metadata store: SQL schema, migrations and a small async repository API.
SQLite for one node, PostgreSQL for clusters."""
