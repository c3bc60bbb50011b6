#!/usr/bin/env python3
"""Writes deploy/grafana/tailsift.json, the Grafana dashboard for tailsift.

Run from anywhere: python3 deploy/grafana/make_dashboard.py. Every query uses only
metric names tailsift exports (tests/deploy.rs checks them against the code).
The datasource is a variable, so the dashboard imports into any Grafana with a
Prometheus datasource.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job"'


def panel(title, targets, unit="short", kind="timeseries", desc="", w=12, h=8):
    return {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "datasource": DS}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


panels = [
    row("Throughput"),
    panel("Spans in / out", [
        (f"sum(rate(tailsift_spans_received_total{{{SEL}}}[$__rate_interval]))", "in"),
        (f"sum(rate(tailsift_spans_produced_total{{{SEL}}}[$__rate_interval]))", "out (kept)"),
    ], "ops"),
    panel("Bytes in / out", [
        (f"sum(rate(tailsift_received_bytes_total{{{SEL}}}[$__rate_interval]))", "in"),
        (f"sum(rate(tailsift_produced_bytes_total{{{SEL}}}[$__rate_interval]))", "out"),
    ], "Bps"),
    panel("Kept share by policy", [
        (f'sum by (policy) (rate(tailsift_traces_decided_total{{{SEL}, decision="sampled"}}[$__rate_interval])) / ignoring(policy) group_left sum(rate(tailsift_traces_decided_total{{{SEL}}}[$__rate_interval]))', "{{policy}}"),
    ], "percentunit", desc="Traces kept under each policy, as a share of all traces decided."),
    panel("Decision latency (first span to decision, wall clock)", [
        (f"histogram_quantile(0.5, sum by (le) (rate(tailsift_decision_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(tailsift_decision_latency_seconds_bucket{{{SEL}}}[$__rate_interval])))", "p99"),
    ], "s"),
    row("Memory"),
    panel("Buffer and memory against the budget", [
        (f"sum by (pod) (tailsift_buffer_bytes{{{SEL}}})", "buffer {{pod}}"),
        (f"sum by (pod) (tailsift_memory_used_bytes{{{SEL}}})", "charged {{pod}}"),
        (f"max by (pod) (tailsift_memory_budget_bytes{{{SEL}}})", "budget {{pod}}"),
        (f"max by (pod) (process_resident_memory_bytes{{{SEL}}})", "RSS {{pod}}"),
    ], "bytes"),
    panel("Memory pressure and forced decisions", [
        (f"max by (pod) (tailsift_memory_pressure{{{SEL}}})", "pressure {{pod}}"),
        (f"sum by (reason) (rate(tailsift_forced_decisions_total{{{SEL}}}[$__rate_interval]))", "forced: {{reason}}"),
        (f"sum(tailsift_paused_partitions{{{SEL}}})", "paused partitions"),
    ], "short", desc="Pressure 1: input paused and oldest traces decided early. Forced decisions were made before decision_wait."),
    panel("Buffered traces", [
        (f"sum by (pod) (tailsift_buffer_traces{{{SEL}}})", "{{pod}}"),
    ]),
    panel("Late spans", [
        (f"sum by (decision) (rate(tailsift_late_spans_total{{{SEL}}}[$__rate_interval]))", "{{decision}}"),
    ], "ops", desc="Spans arriving after their trace's decision; a rise means decision_wait is shorter than traces take."),
    row("Kafka"),
    panel("Consumer lag (not yet read)", [
        (f"sum by (pod) (tailsift_consumer_lag_messages{{{SEL}}})", "{{pod}}"),
    ], desc="What KEDA scales on. Committed lag (kafka tools) also includes the decision wait."),
    panel("Stream-time lag (wall clock minus the input's own clock)", [
        (f"max by (pod) (tailsift_stream_time_lag_seconds{{{SEL}}})", "{{pod}}"),
    ], "s", desc="Grows while the consumer is disconnected, paused or behind: decisions wait for the input."),
    panel("Produce errors and oldest pending delivery", [
        (f"sum by (error) (rate(tailsift_produce_errors_total{{{SEL}}}[$__rate_interval]))", "{{error}}"),
        (f"max(tailsift_produce_oldest_pending_seconds{{{SEL}}})", "oldest pending (s)"),
    ]),
    panel("Commits, brokers, partitions", [
        (f'sum(rate(tailsift_offset_commits_total{{{SEL}, result="error"}}[$__rate_interval]))', "commit errors"),
        (f"min(tailsift_kafka_up{{{SEL}}})", "kafka up (min)"),
        (f"sum(tailsift_assigned_partitions{{{SEL}}})", "assigned partitions"),
    ]),
    panel("Dead letters", [
        (f"sum by (reason) (rate(tailsift_messages_dead_lettered_total{{{SEL}}}[$__rate_interval]))", "{{reason}}"),
    ], "ops"),
    panel("CPU per instance", [
        (f"sum by (pod) (rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval]))", "{{pod}}"),
    ], "percentunit"),
]

# Lay panels out two per row.
y, x = 0, 0
for p in panels:
    if p["type"] == "row":
        if x:
            y, x = y + 8, 0
        p["gridPos"].update({"x": 0, "y": y})
        y += 1
        continue
    p["gridPos"].update({"x": x, "y": y})
    x += p["gridPos"]["w"]
    if x >= 24:
        y, x = y + p["gridPos"]["h"], 0

dashboard = {
    "title": "tailsift",
    "uid": "tailsift",
    "tags": ["tailsift", "tracing", "kafka"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-1h", "to": "now"},
    "refresh": "30s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "job", "type": "query", "datasource": DS, "label": "job",
         "query": "label_values(tailsift_build_info, job)", "refresh": 2, "includeAll": True,
         "multi": True, "current": {"text": "All", "value": "$__all"}},
    ]},
    "panels": [dict(p, id=i + 1) for i, p in enumerate(panels)],
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tailsift.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
