"""The example store: schema and sample data used by `replicator demo`, the docs and the tests."""
