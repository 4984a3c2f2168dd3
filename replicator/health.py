"""The service's optional local HTTP endpoint: `/health` (JSON) and `/metrics` (Prometheus).

`/health` answers 200 when the service is ok or degraded and 503 when it is failing, with the
reasons per job, so a monitor can alarm on the status code alone. `/metrics` is the Prometheus
text exposition of the same state (prometheus-client builds it from a collector that reads
the loop's job health at each scrape: nothing is kept twice).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from replicator.errors import ConfigError

if TYPE_CHECKING:
    from replicator.scheduler import Service

LEVELS = {"ok": 0, "degraded": 1, "failing": 2}


class ServiceCollector(Collector):
    """Metrics of every job, read from the loop's state at each scrape."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        at = datetime.now(UTC)
        labels = ["job", "group", "source", "target"]
        health = GaugeMetricFamily(
            "replicator_job_health", "0 ok, 1 degraded, 2 failing", labels=labels
        )
        lag = GaugeMetricFamily(
            "replicator_lag_seconds",
            "seconds since every change of the job was last delivered",
            labels=labels,
        )
        failures = GaugeMetricFamily(
            "replicator_consecutive_failures", "failed runs in a row", labels=labels
        )
        runs = CounterMetricFamily("replicator_runs", "runs of the job", labels=labels)
        errors = CounterMetricFamily("replicator_errors", "failed runs of the job", labels=labels)
        last_ok = GaugeMetricFamily(
            "replicator_last_success_timestamp_seconds",
            "end of the last successful run (Unix time)",
            labels=labels,
        )
        tlabels = [*labels, "table"]
        rows = CounterMetricFamily(
            "replicator_rows",
            "rows applied to the target (inserted, updated or already equal)",
            labels=tlabels,
        )
        deleted = CounterMetricFamily("replicator_deletes", "rows deleted", labels=tlabels)
        held = GaugeMetricFamily(
            "replicator_quarantined_rows",
            "rows held in the target's quarantine",
            labels=[*tlabels, "state"],
        )
        for h in list(self.service.health.values()):
            values = [h.job, h.group, h.source, h.target]
            level, _ = h.verdict(at)
            health.add_metric(values, LEVELS[level])
            job_lag = h.lag(at)
            if job_lag is not None:
                lag.add_metric(values, job_lag)
            failures.add_metric(values, h.failures)
            runs.add_metric(values, h.runs)
            errors.add_metric(values, h.errors)
            if h.last_ok is not None:
                last_ok.add_metric(values, h.last_ok.timestamp())
            for table, tot in h.totals.items():
                rows.add_metric([*values, table], tot["written"])
                deleted.add_metric([*values, table], tot["deleted"])
            for table, states in h.held.items():
                for state, n in states.items():
                    held.add_metric([*values, table, state], n)
        yield from (health, lag, failures, runs, errors, last_ok, rows, deleted, held)


class HealthServer:
    """A small threaded HTTP server on the loop's state (127.0.0.1 by default)."""

    def __init__(self, service: Service, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.service = service
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))
        handler = _handler(self)
        try:
            self.httpd = ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler)
        except OSError as exc:
            raise ConfigError(
                f"[service] http = {address!r}: cannot listen there ({exc.strerror}); choose "
                "another port or remove `http`"
            ) from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="replicator-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self.thread.start()
        logger.info("health on http://{}:{}/health and /metrics", *self.httpd.server_address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def health(self) -> tuple[int, dict[str, Any]]:
        snap = self.service.snapshot()
        code = 503 if snap["service"]["health"] == "failing" else 200
        return code, snap


def _handler(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/health", "/"):
                code, doc = server.health()
                body = json.dumps(doc, indent=1, default=str).encode()
                self._send(code, "application/json", body)
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4", generate_latest(server.registry))
            else:
                self._send(404, "text/plain", b"not found: try /health or /metrics\n")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape every 15 s is not news for the day's log

    return Handler
