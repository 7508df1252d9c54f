"""The server's Prometheus metrics (prometheus-client), one registry per server so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNSERVED = "<unserved>"  # the task label of requests for a task that is not served (bounded label values)


class ServeMetrics:
    """Requests and errors per task and status, latency and batch-size histograms, the versions loaded, the
    queue, dropped rows, and the registry watch (failed promotions, last sync)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes and friends
        r = self.registry
        self.requests = Counter("softprompt_requests", "Requests answered, per task, protocol and HTTP status",
                                ["task", "protocol", "status"], registry=r)
        self.errors = Counter("softprompt_request_errors", "Requests answered with an error status (4xx/5xx)",
                              ["task", "status"], registry=r)
        self.latency = Histogram("softprompt_request_latency_seconds", "Time from request to response, per task",
                                 ["task"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("softprompt_batch_size", "Rows (instances) per model pass, across tasks",
                                    buckets=SIZE_BUCKETS, registry=r)
        self.batch_tasks = Histogram("softprompt_batch_tasks", "Distinct tasks per model pass",
                                     buckets=SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("softprompt_batch_seconds", "Time of one model pass",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.loaded = Gauge("softprompt_prompt_loaded", "1 for the prompt version each task is served with",
                            ["task", "version"], registry=r)
        self.swaps = Counter("softprompt_prompt_swaps", "Prompt versions swapped in while serving", ["task"],
                             registry=r)
        self.swapped_at = Gauge("softprompt_prompt_swap_timestamp_seconds", "Unix time the version each task serves "
                                "was swapped in (the server's own swap event)", ["task"], registry=r)
        self.refusals = Counter("softprompt_prompt_refusals", "Promoted prompts refused (the old version kept "
                                "serving), per reason", ["task", "reason"], registry=r)
        self.promotion_failures = Counter("softprompt_promotion_failures", "Promotions that failed to load (retried "
                                          "with backoff), per task and reason", ["task", "reason"], registry=r)
        self.last_sync = Gauge("softprompt_registry_last_sync_timestamp_seconds", "Unix time of the last registry "
                               "check that completed", registry=r)
        self.queue_rows = Gauge("softprompt_queue_rows", "Rows waiting for a model pass (autoscale on this)",
                                registry=r)
        self.dropped_rows = Counter("softprompt_dropped_rows", "Rows dropped before a pass, per reason (cancelled: "
                                    "the client went away; deadline: waited past serve.request_timeout_s)",
                                    ["reason"], registry=r)

    def observe_request(self, task: str, protocol: str, status: int, seconds: float) -> None:
        self.requests.labels(task, protocol, str(status)).inc()
        if status >= 400:
            self.errors.labels(task, str(status)).inc()
        self.latency.labels(task).observe(seconds)

    def observe_batch(self, tasks: list[str], seconds: float) -> None:
        self.batch_rows.observe(len(tasks))
        self.batch_tasks.observe(len(set(tasks)))
        self.batch_seconds.observe(seconds)

    def set_version(self, task: str, old: str | None, new: str) -> None:
        if old is not None:
            self.loaded.remove(task, old)
            self.swaps.labels(task).inc()
        self.loaded.labels(task, new).set(1)
        self.swapped_at.labels(task).set_to_current_time()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
