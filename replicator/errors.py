"""One root error class; the CLI prints ``FAILED: <message>`` for any of them."""

from __future__ import annotations


class ReplicatorError(Exception):
    """Root of every error the replicator reports to a user."""

    exit_code = 1


class ConfigError(ReplicatorError):
    """A config or mapping file is wrong: the message names file, line and fix."""

    exit_code = 2


class CheckError(ReplicatorError):
    """The live databases do not match the mappings."""

    exit_code = 3


class TransientError(ReplicatorError):
    """Network down, lock timeout, server restarting: retry later with backoff."""

    exit_code = 4


class PermanentError(ReplicatorError):
    """Will not succeed by retrying: stop the job and report."""

    exit_code = 5


class BusyError(TransientError):
    """Another service holds this job's lock in the target database."""


class AttentionError(ReplicatorError):
    """Nothing failed, but something needs a person: rows held, conflicts, a degraded
    service."""

    exit_code = 7
