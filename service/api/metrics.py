"""Prometheus metrics, computed from the job store at each scrape (no state in the process).

Counters come from the store and the audit trail, so they survive restarts and are the same
whichever process serves them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from service.api.controls import Controls
from service.api.health import disk_free_bytes
from service.jobs.heartbeat import alive_workers
from service.jobs.retention import purge_totals
from service.jobs.store import (
    JobState,
    JobStore,
    count_events,
    count_instances,
    stage_timings,
)
from service.settings import Settings

__all__ = ["STAGE_BUCKETS_S", "metrics_registry"]

#: Stage duration buckets (s): loading takes about a second, writing a few, a whole exam < 1 min.
STAGE_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class StoreCollector(Collector):
    """Collects cordt1's metrics from the job store, the disk and the heartbeats."""

    def __init__(self, settings: Settings, store: JobStore, controls: Controls) -> None:
        self.settings = settings
        self.store = store
        self.controls = controls

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        yield CounterMetricFamily(
            "cordt1_instances_received",
            "DICOM instances received from modalities (our own results excluded).",
            value=count_instances(self.store),
        )
        yield CounterMetricFamily(
            "cordt1_exams_completed",
            "Exams processed with results delivered (jobs done).",
            value=counts[JobState.DONE.value],
        )
        jobs = GaugeMetricFamily("cordt1_jobs", "Jobs by state.", labels=["state"])
        for state, n in counts.items():
            jobs.add_metric([state], n)
        yield jobs
        yield GaugeMetricFamily(
            "cordt1_queue_depth",
            "Jobs waiting for a worker.",
            value=counts[JobState.QUEUED.value],
        )
        yield self._stage_histogram()
        yield CounterMetricFamily(
            "cordt1_results_sent",
            "Deliveries of a job's results to one destination.",
            value=count_events(self.store, "results.sent"),
        )
        yield CounterMetricFamily(
            "cordt1_export_retries",
            "Delivery attempts that failed and were retried later.",
            value=count_events(self.store, "job.sending", "%attempt % failed%"),
        )
        yield CounterMetricFamily(
            "cordt1_export_failures",
            "Jobs whose results were not delivered after every attempt.",
            value=count_events(self.store, "job.failed", "%results not delivered%"),
        )
        purged = purge_totals(self.store)
        yield CounterMetricFamily(
            "cordt1_purged_bytes",
            "Bytes deleted by retention (spool, results, quarantine, queue leftovers).",
            value=purged.bytes,
        )
        yield CounterMetricFamily(
            "cordt1_purged_exams",
            "Exams whose spool or results retention deleted (counted once per purge).",
            value=purged.exams,
        )
        yield GaugeMetricFamily(
            "cordt1_last_purge_timestamp_seconds",
            "Unix time of the last retention purge (0: none yet).",
            value=purged.last_at or 0.0,
        )
        free = disk_free_bytes(self.settings.data_dir)
        disk = GaugeMetricFamily(
            "cordt1_disk_free_bytes", "Free bytes of the data_dir file system.", labels=["path"]
        )
        if free is not None:
            disk.add_metric([str(self.settings.data_dir)], free)
        yield disk
        yield GaugeMetricFamily(
            "cordt1_workers_alive",
            "Workers with a recent heartbeat.",
            value=len(alive_workers(self.settings.data_dir, self.settings.api.worker_heartbeat_s)),
        )
        paused = GaugeMetricFamily(
            "cordt1_paused", "1 while intake or processing is paused.", labels=["part"]
        )
        for part, state in self.controls.state().items():
            paused.add_metric([part], 1 if state.paused else 0)
        yield paused

    def _stage_histogram(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "cordt1_stage_duration_seconds",
            "Duration of each processing stage of processed jobs.",
            labels=["stage"],
        )
        by_stage: dict[str, list[float]] = {}
        for timings in stage_timings(self.store):
            for stage, seconds in timings.items():
                by_stage.setdefault(stage, []).append(seconds)
        for stage, values in sorted(by_stage.items()):
            buckets = [
                (repr(bound), sum(1 for v in values if v <= bound)) for bound in STAGE_BUCKETS_S
            ]
            buckets.append(("+Inf", len(values)))
            family.add_metric([stage], buckets, sum_value=sum(values))
        return family


def metrics_registry(settings: Settings, store: JobStore, controls: Controls) -> CollectorRegistry:
    """A registry holding only cordt1's collector (no process metrics of the test runner)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(settings, store, controls))
    return registry
