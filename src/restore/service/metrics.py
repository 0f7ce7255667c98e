"""Prometheus metrics, in a registry per app so several apps (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("restore_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "restore_request_duration_seconds", "End-to-end request latency", ["endpoint"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stage = Histogram(
            "restore_stage_seconds", "Time per request stage (decode, queue, infer, encode)", ["endpoint", "stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge("restore_queue_depth_tiles", "Tiles waiting per model", ["model"], registry=r)
        self.queue_seconds = Gauge(
            "restore_queue_seconds", "Estimated seconds of work admitted and not yet dispatched, per model", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "restore_in_flight", "Use of each in-flight budget (body_bytes: bytes; pixels: decoded pixels)", ["budget"], registry=r
        )
        self.budget_rejections = Counter(
            "restore_budget_rejections", "Requests refused with 503 because an in-flight budget was spent", ["budget"], registry=r
        )
        self.load_attempts = Counter("restore_model_load_attempts", "Attempts to load a model, failed or not", ["model"], registry=r)
        self.tiles = Counter("restore_tiles", "Tiles inferred per model", ["model"], registry=r)
        self.dropped_tiles = Counter(
            "restore_dropped_tiles", "Tiles dropped because their client went away or their batch failed", ["model"], registry=r
        )
        self.rejections = Counter("restore_queue_rejections", "Requests refused with 503 because too much work was queued before them", ["model"], registry=r)
        self.batch_size = Histogram("restore_batch_size_tiles", "Tiles per inference batch", ["model"], buckets=_BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram(
            "restore_inference_seconds", "Wall time of one batch inference", ["model"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.provider = Gauge("restore_execution_provider", "1 for the ONNX Runtime provider a model runs on", ["model", "provider"], registry=r)
        self.precision = Gauge(
            "restore_model_precision", "1 for the precision a model runs in (float32, int8: see RESTORE_PRECISION)", ["model", "precision"], registry=r
        )
        self.model_ready = Gauge("restore_model_ready", "1 when the model loaded, verified and warmed up", ["model"], registry=r)
        self.jobs = Gauge("restore_jobs", "Jobs kept, by status (queued, running, succeeded, failed, cancelled)", ["status"], registry=r)
        self.job_result_bytes = Gauge("restore_job_result_bytes", "Bytes of job results on disk", registry=r)
        self.jobs_expired = Counter(
            "restore_jobs_expired", "Finished jobs deleted, by reason (age, count, bytes: the bound that dropped them)", ["reason"], registry=r
        )
