"""replicator: direct database replication between point-of-sale registers and their server."""

__version__ = "0.1.0"
