"""Prometheus metrics, served at /metrics."""

from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter("mailowl_jobs_total", "Finished analysis jobs by result", ["result"])
QUEUE_DEPTH = Gauge("mailowl_queue_depth", "Jobs waiting for a worker")
REJECTED = Counter("mailowl_queue_rejected_total", "Submissions refused because the queue was full")
LATENCY = Histogram("mailowl_analysis_seconds", "Time from a worker taking a job to its verdict",
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
LOG_LINES_DROPPED = Counter("mailowl_log_lines_dropped", "Verdict log lines lost: the queue to the log writer was "
                            "full, or the target did not take them before shutdown")


@cache
def job_counter(result: str) -> Any:
    """The counter child for one result; looking labels up costs more than counting."""
    return JOBS.labels(result=result)

#: remote analysers (Cortex): seconds from submitting a sample to its report, by analyser and backend
#: (the Cortex analyzer)
BACKEND_LATENCY = Histogram("mailowl_backend_seconds", "Time from submitting a sample to a remote backend to its "
                            "report", ["analyser", "backend"],
                            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800))
BACKEND_ERRORS = Counter("mailowl_backend_errors_total", "Remote backend errors by kind (connection, http_5xx, "
                         "http_4xx, auth, malformed, analyzer, failure, deleted, max_age)",
                         ["analyser", "backend", "kind"])
PARKED = Gauge("mailowl_parked_samples", "Samples parked while a remote backend (Cortex) analyses them")
