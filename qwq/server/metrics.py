"""Prometheus metrics, in a registry of the app's own (two apps in one process never mix).

Engine state (running and waiting requests, KV-cache use, prefix-cache hit rate, token
counters) is read from engine.stats() at scrape time; latencies and costs are recorded by the
request handlers as requests run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from qwq.reasoning import metrics as reasoning_metrics

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0,
                   2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
ACCEPTANCE_BUCKETS = tuple(i / 10 for i in range(11))


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], dict[str, float]], prices: tuple[float, float]):
        self.stats = stats
        self.prices = prices

    def collect(self) -> Iterator:
        s = self.stats()
        gauges = (("qwq_requests_running", "Sequences running in the engine", "running"),
                  ("qwq_requests_waiting", "Sequences waiting for KV blocks", "waiting"),
                  ("qwq_kv_cache_usage_ratio", "Share of KV-cache blocks in use", "kv_usage"),
                  ("qwq_kv_cache_free_blocks", "KV-cache blocks free (cached ones included)",
                   "free_blocks"),
                  ("qwq_kv_cache_blocks", "KV-cache blocks in all", "total_blocks"),
                  ("qwq_prefix_cache_hit_rate",
                   "Share of looked-up prompt tokens served from the prefix cache",
                   "prefix_hit_rate"))
        for name, doc, key in gauges:
            yield GaugeMetricFamily(name, doc, value=float(s.get(key, 0.0)))
        counters = (("qwq_prompt_tokens", "Prompt tokens received", "prompt_tokens"),
                    ("qwq_generation_tokens", "Tokens generated", "generation_tokens"),
                    ("qwq_preemptions", "Sequences preempted for lack of KV blocks",
                     "preemptions"),
                    ("qwq_prefix_cache_queried_tokens",
                     "Prompt tokens looked up in the prefix cache", "prefix_queried_tokens"),
                    ("qwq_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache",
                     "prefix_hit_tokens"),
                    ("qwq_spec_decode_draft_tokens",
                     "Speculative decoding: tokens drafted (draft model or prompt lookup)",
                     "draft_tokens"),
                    ("qwq_spec_decode_accepted_tokens",
                     "Speculative decoding: drafted tokens the model kept",
                     "accepted_draft_tokens"))
        for name, doc, key in counters:
            yield CounterMetricFamily(name, doc, value=float(s.get(key, 0.0)))
        yield from _reasoning_families()
        price = GaugeMetricFamily("qwq_price_per_token", "Price per token set by the operator",
                                  labels=["kind"])
        price.add_metric(["input"], self.prices[0])
        price.add_metric(["output"], self.prices[1])
        yield price


# What the reasoning controls did (qwq.reasoning.metrics; process-wide counters)
_REASONING = {"loop_detected": ("qwq_loops_detected", "Loops cut or steered, by action"),
              "reasoning_closed": ("qwq_reasoning_closed",
                                   "Reasoning closed by qwq, by reason (budget, conclude)"),
              "guard_decision": ("qwq_guard_decisions",
                                 "Guard decisions, by stage, guard, decision and category "
                                 "(output checks count their blocks only)"),
              "guard_seconds": ("qwq_guard_seconds", "Time spent in guard checks")}


def _reasoning_families() -> Iterator[CounterMetricFamily]:
    rows: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in reasoning_metrics.snapshot():
        if name in _REASONING:
            rows.setdefault(name, []).append((labels, value))
    for name, series in rows.items():
        metric, doc = _REASONING[name]
        keys = sorted({k for labels, _ in series for k in labels})
        family = CounterMetricFamily(metric, doc, labels=keys)
        for labels, value in series:
            family.add_metric([labels.get(k, "") for k in keys], value)
        yield family


class Metrics:
    def __init__(self, stats: Callable[[], dict[str, float]], price_input: float = 0.0,
                 price_output: float = 0.0):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(stats, (price_input, price_output)))
        r = self.registry
        self.ttft = Histogram("qwq_time_to_first_token_seconds", "Time to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("qwq_inter_token_latency_seconds", "Time between output steps",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("qwq_request_latency_seconds", "Request time, end to end",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("qwq_requests", "Requests finished, by endpoint and outcome",
                                ["endpoint", "outcome"], registry=r)
        self.acceptance = Histogram(
            "qwq_spec_decode_acceptance_ratio",
            "Speculative decoding: share of a request's drafted tokens the model kept",
            buckets=ACCEPTANCE_BUCKETS, registry=r)
        self.cost = Counter("qwq_cost", "Cost of the tokens served, at the operator's prices",
                            ["kind"], registry=r)
        self.price_input = price_input
        self.price_output = price_output

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def track(self, endpoint: str) -> RequestTrack:
        return RequestTrack(self, endpoint)

    def costs(self, prompt_tokens: int, completion_tokens: int) -> tuple[float, float]:
        return prompt_tokens * self.price_input, completion_tokens * self.price_output


@dataclass
class RequestTrack:
    """Latencies of one request as its outputs arrive."""

    metrics: Metrics
    endpoint: str
    start: float = field(default_factory=time.monotonic)
    first: float | None = None
    last: float | None = None
    done: bool = False

    def on_tokens(self) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
            self.metrics.ttft.observe(now - self.start)
        else:
            self.metrics.itl.observe(now - (self.last or now))
        self.last = now

    def on_drafts(self, drafted: float, accepted: float) -> None:
        """A finished request's speculative decoding: its acceptance rate."""
        if drafted:
            self.metrics.acceptance.observe(accepted / drafted)

    def finish(self, outcome: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        m = self.metrics
        m.e2e.observe(time.monotonic() - self.start)
        m.requests.labels(self.endpoint, outcome).inc()
        cost_in, cost_out = m.costs(prompt_tokens, completion_tokens)
        m.cost.labels("input").inc(cost_in)
        m.cost.labels("output").inc(cost_out)
