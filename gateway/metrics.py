"""Prometheus metrics of one gateway process (documented in the README; the docs test checks each)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RESPONSES = Counter("gateway_responses_total", "Responses sent, by status class and audit outcome.",
                    ["status_class", "outcome"], registry=REGISTRY)
AUDIT_BATCH_EVENTS = Histogram("gateway_audit_batch_events", "Events per audit group commit.",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048), registry=REGISTRY)
AUDIT_COMMIT_SECONDS = Histogram("gateway_audit_commit_seconds", "Time to write and commit one audit batch.",
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2),
                                 registry=REGISTRY)
AUDIT_FAILURES = Counter("gateway_audit_failures_total", "Audit batches that could not be committed.",
                         registry=REGISTRY)
AUDIT_LOG_SIZE = Gauge("gateway_audit_log_events", "Events in this process's audit log.", registry=REGISTRY)
SNAPSHOT_READY = Gauge("gateway_snapshot_ready", "1 while the credential and licence snapshot is current.",
                       registry=REGISTRY)
SNAPSHOT_GENERATION = Gauge("gateway_snapshot_generation", "Changes applied to the snapshot since start.",
                            registry=REGISTRY)
QUOTA_DENIALS = Counter("gateway_quota_denials_total", "Deliveries refused by a quota or a rate limit.",
                        ["reason"], registry=REGISTRY)
PAGE_CACHE = Counter("gateway_page_cache_total", "Record pages served from memory (hit) or read from PostgreSQL (miss).",
                     ["result"], registry=REGISTRY)
SNAPSHOT_LAG = Histogram("gateway_snapshot_lag_seconds",
                         "Time from a change's notification to its arrival in this instance's snapshot.",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5), registry=REGISTRY)
