"""Prometheus metrics, served at /metrics."""

from collections.abc import Iterable
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

#: seconds one analyser took for a sample, by analyser and backend: a built-in one's run (libmagic, olevba,
#: pefile, yara, unpack, clamd; measured in the worker, recorded here), a remote one's from submitting the
#: sample to its report (Cortex: the backend is the Cortex analyzer). Buckets from a millisecond to Cortex's
#: maximum_job_age: one histogram for both, so one dashboard shows where the time goes.
BACKEND_LATENCY = Histogram("mailowl_backend_seconds", "Time an analyser took for a sample: a built-in one's run, a "
                            "remote one's from submitting the sample to its report", ["analyser", "backend"],
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                                     120, 300, 600, 900, 1800))
BACKEND_ERRORS = Counter("mailowl_backend_errors_total", "Analyser errors by kind (built-in: error, timeout, crash; "
                         "remote: connection, http_5xx, http_4xx, auth, malformed, analyzer, failure, deleted, "
                         "max_age)", ["analyser", "backend", "kind"])
PARKED = Gauge("mailowl_parked_samples", "Samples parked while a remote backend (Cortex) analyses them")


@cache
def _analyser(analyser: str, backend: str) -> tuple[Any, Any]:
    return BACKEND_LATENCY.labels(analyser, backend), BACKEND_ERRORS.labels(analyser, backend, "error")


def analysers_ran(timings: Iterable[tuple[str, str, float, bool]]) -> None:
    """Record the built-in analysers' runs of one analysis: (report, backend, seconds, whether it raised)."""
    for analyser, backend, seconds, failed in timings:
        latency, errors = _analyser(analyser, backend)
        latency.observe(seconds)
        if failed:
            errors.inc()


def analyser_stopped(analyser: tuple[str, str] | None, kind: str) -> None:
    """A built-in analyser (report, backend) that outlived the deadline ("timeout") or whose worker process
    died ("crash"); None: the analysis was elsewhere (a rule), nothing to count per analyser."""
    if analyser is not None:
        BACKEND_ERRORS.labels(*analyser, kind).inc()
