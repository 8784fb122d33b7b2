#!/usr/bin/env python3
"""Writes the hyla Grafana dashboard, deploy/grafana/dashboards/hyla.json.

The dashboard is generated so that its panels stay uniform; edit this file, then run
    python3 deploy/grafana/build_dashboard.py           (writes hyla.json)
    python3 deploy/grafana/build_dashboard.py --check   (exit 1 if hyla.json is stale; CI)
Metric names: docs/metrics.md. Recording rules (hyla:...): deploy/prometheus/rules.yaml.
tests/deploy checks that every metric used here is exported by a running hyla-server and runs
every query against a real Prometheus. Standard library only.
"""
import argparse
import json
import os
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboards", "hyla.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace=~"$namespace", job=~"$job"'
RATE = "$__rate_interval"


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.panels = []
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        if self.x:
            self.y += self.row_h
        self.panels.append({"type": "row", "title": title, "id": self._id(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1
        self.x = 0
        self.row_h = 0

    def add(self, panel, w=8, h=8):
        if self.x + w > 24:
            self.y += self.row_h
            self.x = 0
            self.row_h = 0
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)


def target(expr, legend, ref, instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": not instant,
         "instant": instant}
    return t


def timeseries(title, description, unit, targets, stack=False, min_zero=True):
    defaults = {"unit": unit, "custom": {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never",
                                         "stacking": {"mode": "normal" if stack else "none"}}}
    if min_zero:
        defaults["min"] = 0
    return {"type": "timeseries", "title": title, "description": description, "datasource": DS,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(targets)]}


def stat(title, description, unit, expr, thresholds=None):
    steps = [{"color": "green", "value": None}]
    for color, value in thresholds or []:
        steps.append({"color": color, "value": value})
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "fieldConfig": {"defaults": {"unit": unit,
                                         "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"},
            "targets": [target(expr, "", "A")]}


def quantiles(metric, by=""):
    group = f"le{', ' + by if by else ''}"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [(f"histogram_quantile({q}, sum by ({group}) "
             f"(rate({metric}_bucket{{{SEL}}}[{RATE}])))", f"p{int(q * 100)}{suffix}")
            for q in (0.5, 0.9, 0.99)]


def build():
    L = Layout()

    L.row("Overview")
    L.add(stat("Requests / s", "Finished RPCs per second, all methods.", "reqps",
               f"sum(rate(hyla_requests_total{{{SEL}}}[{RATE}]))"), w=4, h=4)
    L.add(stat("Server-side error ratio (5m)",
               "UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED over all RPCs "
               "(recording rule hyla:errors:ratio_rate5m; alert above 5 %).", "percentunit",
               f"max(hyla:errors:ratio_rate5m{{{SEL}}})", [("orange", 0.01), ("red", 0.05)]),
          w=4, h=4)
    L.add(stat("TTFT p99 (5m)", "Time to first token, 99th percentile (alert above 1 s).", "s",
               f"max(hyla:time_to_first_token_seconds:p99_5m{{{SEL}}})",
               [("orange", 0.5), ("red", 1)]), w=4, h=4)
    L.add(stat("Generated tokens / s (1m)", "Output tokens per second over all replicas.",
               "short", f"sum(hyla:generated_tokens:rate1m{{{SEL}}})"), w=4, h=4)
    L.add(stat("State memory (fullest pool, worst replica)",
               "Recording rule hyla:state_memory:utilization (alert above 90 %).", "percentunit",
               f"max(hyla:state_memory:utilization{{{SEL}}})", [("orange", 0.75), ("red", 0.9)]),
          w=4, h=4)
    L.add(stat("Replicas scraped", "hyla targets whose /metrics answers.", "short",
               f"count(hyla_build_info{{{SEL}}})"), w=4, h=4)

    L.row("Requests and errors")
    L.add(timeseries("Request rate by method", "Finished RPCs per second by method.", "reqps",
                     [(f"sum by (method) (rate(hyla_requests_total{{{SEL}}}[{RATE}]))",
                       "{{method}}")], stack=True))
    L.add(timeseries("Errors by code", "Finished RPCs per second whose code is not OK.", "reqps",
                     [(f'sum by (code) (rate(hyla_requests_total{{{SEL}, code!="OK"}}[{RATE}]))',
                       "{{code}}")], stack=True))
    L.add(timeseries("Rejections and cancellations",
                     "Admissions refused by reason; requests ended early by cause.", "reqps",
                     [(f"sum by (reason) (rate(hyla_rejections_total{{{SEL}}}[{RATE}]))",
                       "rejected: {{reason}}"),
                      (f"sum by (cause) (rate(hyla_cancellations_total{{{SEL}}}[{RATE}]))",
                       "cancelled: {{cause}}")]))

    L.row("Latency")
    L.add(timeseries("Time to first token", "Generate: accepted to first token sent.", "s",
                     quantiles("hyla_time_to_first_token_seconds")))
    L.add(timeseries("Inter-token latency", "Generate: between consecutive tokens.", "s",
                     quantiles("hyla_inter_token_latency_seconds")))
    L.add(timeseries("End-to-end latency", "Generate: accepted to finished.", "s",
                     quantiles("hyla_e2e_request_latency_seconds")))
    L.add(timeseries("Queue time", "Accepted to first scheduled.", "s",
                     quantiles("hyla_request_queue_time_seconds")))
    L.add(timeseries("Scheduler step time p99 by phase", "One scheduler step (prefill, decode, "
                     "mixed).", "s",
                     [(f"histogram_quantile(0.99, sum by (le, phase) "
                       f"(rate(hyla_step_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                       "p99 {{phase}}")]))
    L.add(timeseries("RPC duration p99 by method", "End-to-end RPC latency by method.", "s",
                     [(f"histogram_quantile(0.99, sum by (le, method) "
                       f"(rate(hyla_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                       "p99 {{method}}")]))

    L.row("Throughput, queue and batch")
    L.add(timeseries("Tokens per second", "Prompt tokens processed, tokens generated, and "
                     "tokens served from session state instead of recomputed.", "short",
                     [(f"sum(rate(hyla_generated_tokens_total{{{SEL}}}[{RATE}]))", "generated"),
                      (f"sum(rate(hyla_prompt_tokens_total{{{SEL}}}[{RATE}]))", "prompt"),
                      (f"sum(rate(hyla_session_reused_tokens_total{{{SEL}}}[{RATE}]))",
                       "reused from sessions")]))
    L.add(timeseries("Queue and running batch", "Requests waiting for admission (an HPA input) "
                     "and requests in the running batch.", "short",
                     [(f"sum(hyla_requests_waiting{{{SEL}}})", "waiting"),
                      (f"sum(hyla_requests_running{{{SEL}}})", "running")]))
    L.add(timeseries("Batch size", "Sequences per scheduler step.", "short",
                     [(f"sum(rate(hyla_batch_size_sum{{{SEL}}}[{RATE}])) / "
                       f"sum(rate(hyla_batch_size_count{{{SEL}}}[{RATE}]))", "mean"),
                      (f"histogram_quantile(0.9, sum by (le) "
                       f"(rate(hyla_batch_size_bucket{{{SEL}}}[{RATE}])))", "p90")]))
    L.add(timeseries("Tokens per request", "New prompt tokens and generated tokens per Generate "
                     "(median).", "short",
                     [(f"histogram_quantile(0.5, sum by (le) "
                       f"(rate(hyla_request_prompt_tokens_bucket{{{SEL}}}[{RATE}])))",
                       "prompt p50"),
                      (f"histogram_quantile(0.5, sum by (le) "
                       f"(rate(hyla_request_generated_tokens_bucket{{{SEL}}}[{RATE}])))",
                       "generated p50")]))

    L.row("State memory")
    L.add(timeseries("State memory by pool against capacity",
                     "Bytes in use in the recurrent-state slots and the softmax KV blocks, and "
                     "each pool's budget (--memory-budget).", "bytes",
                     [(f"sum by (pool) (hyla_state_memory_used_bytes{{{SEL}}})", "used {{pool}}"),
                      (f"sum by (pool) (hyla_state_memory_capacity_bytes{{{SEL}}})",
                       "capacity {{pool}}")]))
    L.add(timeseries("State memory utilisation by replica",
                     "Used / capacity over both pools per replica (an HPA input), and the "
                     "fullest pool (the alert's signal).", "percentunit",
                     [(f"hyla_state_memory_utilization_ratio{{{SEL}}}", "both pools {{instance}}"),
                      (f"hyla:state_memory:utilization{{{SEL}}}", "fullest pool {{instance}}")]))
    L.add(timeseries("Resident state against a softmax-only model",
                     "State bytes the resident sequences hold, beside the KV cache a "
                     "full-attention model would hold for the same sequences.", "bytes",
                     [(f"sum(hyla_state_memory_used_bytes{{{SEL}}})", "hyla state"),
                      (f"sum(hyla_softmax_equivalent_bytes{{{SEL}}})", "softmax-equivalent")]))
    L.add(timeseries("Per-session memory against context length",
                     "Mean state bytes of a sequence at the end of a request, by context-length "
                     "bucket, beside the softmax-equivalent bytes of the same sequences.", "bytes",
                     [(f"sum by (context_bucket) (rate(hyla_session_state_bytes_sum{{{SEL}}}"
                       f"[{RATE}])) / sum by (context_bucket) "
                       f"(rate(hyla_session_state_bytes_count{{{SEL}}}[{RATE}]))",
                       "hyla {{context_bucket}}"),
                      (f"sum by (context_bucket) (rate(hyla_session_softmax_equivalent_bytes_sum"
                       f"{{{SEL}}}[{RATE}])) / sum by (context_bucket) "
                       f"(rate(hyla_session_softmax_equivalent_bytes_count{{{SEL}}}[{RATE}]))",
                       "softmax-equivalent {{context_bucket}}")]), w=16)

    L.row("NAtS-L routing and sessions")
    L.add(timeseries("NAtS-L softmax routing fraction",
                     "Share of (chunk, head) routing decisions that chose softmax attention "
                     "(the rest use the Gated DeltaNet path).", "percentunit",
                     [(f'sum(rate(hyla_natsl_chunks_routed_total{{{SEL}, op="softmax"}}[{RATE}]))'
                       f" / sum(rate(hyla_natsl_chunks_routed_total{{{SEL}}}[{RATE}]))",
                       "softmax fraction")]))
    L.add(timeseries("Sessions", "Sessions holding state; created and released per second "
                     "(they converge: a lasting gap is a leak).", "short",
                     [(f"sum(hyla_sessions_resident{{{SEL}}})", "resident"),
                      (f"sum(rate(hyla_sessions_created_total{{{SEL}}}[{RATE}]))", "created / s"),
                      (f"sum(rate(hyla_sessions_released_total{{{SEL}}}[{RATE}]))",
                       "released / s")]))
    L.add(timeseries("Session evictions by reason", "Sessions dropped by the server (idle TTL, "
                     "LRU at --max-sessions, capacity).", "short",
                     [(f"sum by (reason) (rate(hyla_session_evictions_total{{{SEL}}}[{RATE}]))",
                       "{{reason}}")], stack=True))

    variables = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
         "query": {"query": "label_values(hyla_build_info, namespace)", "refId": "namespace"},
         "definition": "label_values(hyla_build_info, namespace)", "refresh": 2,
         "includeAll": True, "allValue": ".*", "multi": True, "current": {}, "hide": 0,
         "sort": 1, "regex": "", "options": []},
        {"name": "job", "label": "Job", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(hyla_build_info{namespace=~"$namespace"}, job)',
                   "refId": "job"},
         "definition": 'label_values(hyla_build_info{namespace=~"$namespace"}, job)',
         "refresh": 2, "includeAll": True, "allValue": ".*", "multi": True, "current": {},
         "hide": 0, "sort": 1, "regex": "", "options": []},
    ]
    return {
        "uid": "hyla-overview",
        "title": "hyla",
        "description": "hyla-server: traffic, latency, throughput, state memory, NAtS-L routing "
                       "and sessions (metrics: docs/metrics.md).",
        "tags": ["hyla", "llm-serving"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [],
        "panels": L.panels,
    }


def render():
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if hyla.json is not up to date")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = open(OUT, encoding="utf-8").read() if os.path.exists(OUT) else ""
        if current != text:
            print(f"{OUT} is stale: run python3 deploy/grafana/build_dashboard.py", file=sys.stderr)
            return 1
        print(f"{OUT} is up to date")
        return 0
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
