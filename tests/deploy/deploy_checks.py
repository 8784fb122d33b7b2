#!/usr/bin/env python3
"""Checks of hyla's deployment files (deploy/, Dockerfile*), run by ctest (label `deploy`).

There is no cluster, Docker engine or Grafana here; what a machine without them can check, this
checks, against real tools and a real hyla-server:

  static      kustomize renders of every overlay (and component); each manifest validated
              against the Kubernetes API schemas (kubernetes-validate, strict) and the
              Prometheus Operator kinds against tests/deploy/schemas/; the cross-references
              (selectors, ports, probes, grace period, GPU scheduling, security context);
              envoy.yaml parsed field by field as Envoy's v3 API (envoy-data-plane) plus its
              routing and retry rules; promtool check/test rules; the PrometheusRule equals
              rules.yaml; the adapter rules; the dashboard (JSON, ids, queries); Dockerfiles.
              With --hyla-server: every rendered hyla-server argument is accepted by the real
              flag parser.
  scrape      starts hyla-server, sends traffic with the `hyla` client, scrapes /metrics:
              `promtool check metrics` passes and every metric name the dashboard, the rules,
              the HPA and the adapter rules use is in the scrape.
  prometheus  starts hyla-server and a real Prometheus (rules.yaml loaded) scraping it, sends
              traffic, and waits (bounded, on the query's own result) until the recording rules
              have data through Prometheus's HTTP API; then runs the adapter's rendered queries
              and every dashboard query.
  grpc-wire   shows on the wire (HTTP/2 frames) why Envoy's `retry_on: unavailable` retries
              only before the first token: a call refused while draining is a Trailers-Only
              response (grpc-status 14 in the HEADERS frame), while a token stream's first
              HEADERS frame has no grpc-status (its status comes in trailers).
  sync        rewrites the generated files: deploy/base/prometheusrule.yaml (from
              deploy/prometheus/rules.yaml) and deploy/components/tls/envoy-upstream-tls.yaml
              (from deploy/envoy/envoy.yaml).

Every subcommand prints what it checked and ends with `N passed, N failed`; exit 1 on failure.
"""
import argparse
import copy
import importlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
SCHEMAS = os.path.join(ROOT, "tests", "deploy", "schemas")
RULES = os.path.join(DEPLOY, "prometheus", "rules.yaml")
RULES_TEST = os.path.join(DEPLOY, "prometheus", "tests", "rules_test.yaml")
ADAPTER = os.path.join(DEPLOY, "prometheus", "adapter-rules.yaml")
PROMRULE = os.path.join(DEPLOY, "base", "prometheusrule.yaml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "hyla.json")
ENVOY = os.path.join(DEPLOY, "envoy", "envoy.yaml")
ENVOY_TLS = os.path.join(DEPLOY, "components", "tls", "envoy-upstream-tls.yaml")
OVERLAYS = ["overlays/cpu", "overlays/gpu"]
# Components, each rendered on top of the cpu overlay.
COMPONENTS = ["components/model-volume", "components/tls"]
# Kubernetes versions validated against: the oldest we support (native preStop sleep, gRPC
# probes GA) and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Health service names hyla-server answers (service/server.cc).
HEALTH_NAMES = {"", "hyla.v1.Hyla", "readiness", "liveness"}
# Series that the rules use but hyla-server does not export.
EXTERNAL_METRICS = {"up", "kube_deployment_status_replicas_available"}
# The longest stream we promise (deploy/README.md): the server's max-connection-age grace must
# be at least this long, and longer than the drain deadline.
LONGEST_STREAM_S = 30 * 60


# ---- results -----------------------------------------------------------------------------------

class Results:
    """Collects named checks; prints one line each and the closing summary."""

    def __init__(self):
        self.passed = 0
        self.failed = 0

    def ok(self, name, detail=""):
        self.passed += 1
        print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)

    def fail(self, name, detail):
        self.failed += 1
        print(f"FAIL {name}: {detail}", flush=True)

    def check(self, cond, name, detail=""):
        if cond:
            self.ok(name, detail if isinstance(detail, str) else "")
        else:
            self.fail(name, detail or "condition is false")
        return bool(cond)

    def run(self, name, fn):
        """Runs fn(); an exception is a failure of `name`."""
        try:
            detail = fn()
            self.ok(name, detail or "")
            return True
        except Exception as e:  # noqa: BLE001 - every error is a reported failure
            self.fail(name, f"{type(e).__name__}: {e}")
            return False

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed", flush=True)
        return 0 if self.failed == 0 else 1


class CheckError(Exception):
    pass


def need(cond, message):
    if not cond:
        raise CheckError(message)


# ---- helpers -----------------------------------------------------------------------------------

def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def venv_tool(name):
    """A tool installed beside this interpreter (the deploy venv), else one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which(name)


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def parse_duration_s(text):
    """'30s', '10m', '1h30m', '250ms', '0' -> seconds (the forms hyla-server and Envoy use)."""
    text = str(text).strip()
    if text == "0":
        return 0.0
    total = 0.0
    pos = 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        need(m.start() == pos, f"bad duration {text!r}")
        pos = m.end()
        total += float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    need(pos == len(text) and pos > 0, f"bad duration {text!r}")
    return total


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
                "and", "or", "unless", "inf", "nan"}


def promql_metric_names(expr):
    """Metric names a PromQL expression selects (functions, keywords, labels, ranges removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if m.start() > 0 and (s[m.start() - 1].isdigit() or s[m.start() - 1] == "."):
            continue  # exponent or duration unit of a number
        if s[m.end():].lstrip().startswith("("):
            continue  # function or aggregation
        if m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def self_test_promql_names():
    cases = {
        'histogram_quantile(0.99, sum by (le, job) (rate(a_bucket{x="y{z}"}[5m])))': {"a_bucket"},
        "sum(rate(b_total[$__rate_interval])) / sum without (pool) (c) > 1e3": {"b_total", "c"},
        'x:y:z{code=~"A|B"} and on (namespace) sum by (namespace) (d) offset 5m': {"x:y:z", "d"},
        "absent(up{job=\"hyla\"} == 1) or max(e) by (pod)": {"up", "e"},
    }
    for expr, want in cases.items():
        got = promql_metric_names(expr)
        need(got == want, f"promql_metric_names({expr!r}) = {sorted(got)}, want {sorted(want)}")
    return f"{len(cases)} cases"


def rules_exprs(rules_doc):
    out = []
    for g in rules_doc["groups"]:
        for r in g["rules"]:
            out.append((r.get("record") or r.get("alert"), r["expr"]))
    return out


def recorded_names(rules_doc):
    return {r["record"] for g in rules_doc["groups"] for r in g["rules"] if "record" in r}


def dashboard_exprs(dash):
    """(panel title, expr) of every target of every panel, rows' nested panels included."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t.get("expr", "")))
            walk(p.get("panels", []))
    walk(dash["panels"])
    return out


def adapter_render(query_template, series, namespace, pods, group_by="pod"):
    """Renders an adapter metricsQuery as prometheus-adapter does for a pods query."""
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (query_template.replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by))


def adapter_series_name(rule):
    m = re.match(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)", rule["seriesQuery"])
    need(m, f"adapter seriesQuery without a metric name: {rule['seriesQuery']!r}")
    return m.group(1)


def all_used_metric_names():
    """Every metric name the dashboard, the rules, the HPA and the adapter rules use, with where
    it is used; recording-rule names are resolved to the rules that define them."""
    used = {}
    rules_doc = load_yaml(RULES)
    records = recorded_names(rules_doc)
    for name, expr in rules_exprs(rules_doc):
        for m in promql_metric_names(expr):
            used.setdefault(m, set()).add(f"rule {name}")
    for title, expr in dashboard_exprs(json.load(open(DASHBOARD, encoding="utf-8"))):
        for m in promql_metric_names(expr):
            used.setdefault(m, set()).add(f"dashboard panel {title!r}")
    for v in json.load(open(DASHBOARD, encoding="utf-8"))["templating"]["list"]:
        q = v.get("definition") or ""
        m = re.match(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", q)
        if m:
            used.setdefault(m.group(1), set()).add(f"dashboard variable {v['name']}")
    for r in load_yaml(ADAPTER)["rules"]:
        used.setdefault(adapter_series_name(r), set()).add("adapter rule")
    hpa = load_yaml(os.path.join(DEPLOY, "base", "horizontalpodautoscaler.yaml"))
    for m in hpa["spec"]["metrics"]:
        used.setdefault(m["pods"]["metric"]["name"], set()).add("HPA")
    return used, records


# ---- kustomize and manifests -------------------------------------------------------------------

def kustomize(kubectl, path):
    p = run([kubectl, "kustomize", path])
    need(p.returncode == 0, f"kubectl kustomize {path} failed: {p.stderr.strip()}")
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    need(docs, f"kubectl kustomize {path} rendered nothing")
    return docs


def render_with_component(kubectl, component, tmp):
    """Renders the cpu overlay plus `component` through a temporary kustomization."""
    d = tempfile.mkdtemp(dir=tmp)
    rel = lambda p: os.path.relpath(os.path.join(DEPLOY, p), d)  # noqa: E731
    with open(os.path.join(d, "kustomization.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                        "resources": [rel("overlays/cpu")], "components": [rel(component)]}, f)
    return kustomize(kubectl, d)


def find(docs, kind, name):
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    need(len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}")
    return hits[0]


def find_prefix(docs, kind, prefix):
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(prefix)]
    need(len(hits) == 1, f"expected one {kind} {prefix}*, found {len(hits)}")
    return hits[0]


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def expand_env(arg, env):
    """The kubelet's $(VAR) expansion of container args."""
    def sub(m):
        need(m.group(1) in env, f"argument {arg!r} uses undefined $({m.group(1)})")
        return env[m.group(1)]
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, arg)


def server_container(docs):
    dep = find(docs, "Deployment", "hyla")
    cs = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "hyla"]
    need(len(cs) == 1, "the hyla Deployment has no container named hyla")
    return dep, cs[0]


def server_args(container):
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return [expand_env(a, env) for a in container.get("args", [])]


def flag_values(args):
    out = {}
    for a in args:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            out[k] = v
    return out


def validate_k8s(docs, label):
    import kubernetes_validate  # noqa: PLC0415 - from the deploy venv
    import jsonschema  # noqa: PLC0415
    counts = {}
    for d in docs:
        kind = d["kind"]
        counts[kind] = counts.get(kind, 0) + 1
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            schema_path = os.path.join(
                SCHEMAS, f"{kind.lower()}.{d['apiVersion'].replace('/', '_')}.json")
            need(os.path.exists(schema_path), f"{label}: no schema for {kind} {d['apiVersion']}")
            schema = json.load(open(schema_path, encoding="utf-8"))
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=str)
            need(not errors, f"{label}: {kind}/{d['metadata']['name']}: "
                 + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))
            real = os.environ.get("HYLA_DEPLOY_REAL_CRDS")
            if real:
                validate_real_crd(d, real, label)
            continue
        for v in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise CheckError(f"{label}: {kind}/{d['metadata']['name']} (Kubernetes {v}): "
                                 f"{'/'.join(map(str, e.path))}: {e.message}") from None
            except kubernetes_validate.SchemaNotFoundError as e:
                raise CheckError(f"{label}: no Kubernetes {v} schema: {e}") from None
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def validate_real_crd(doc, crd_dir, label):
    """Validates against the Prometheus Operator's own CRD (a directory of CRD YAMLs)."""
    import jsonschema  # noqa: PLC0415
    plural = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}[doc["kind"]]
    path = [os.path.join(crd_dir, f) for f in os.listdir(crd_dir) if plural in f]
    need(path, f"HYLA_DEPLOY_REAL_CRDS: no CRD for {plural} in {crd_dir}")
    crd = load_yaml(path[0])
    schema = [v for v in crd["spec"]["versions"] if v["name"] == "v1"][0]["schema"][
        "openAPIV3Schema"]

    def strict(s):  # structural schemas prune unknown fields: reject them instead
        if isinstance(s, dict):
            if s.get("type") == "object" and "properties" in s:
                s.setdefault("additionalProperties", False)
            for v in s.values():
                strict(v)
        elif isinstance(s, list):
            for v in s:
                strict(v)
    schema = copy.deepcopy(schema)
    strict(schema)
    schema["properties"]["metadata"] = {"type": "object"}
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    need(not errors, f"{label}: {doc['kind']} against the operator CRD: "
         + "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))


def check_security(docs, label):
    n = 0
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        need(pod.get("automountServiceAccountToken") is False,
             f"{label}: {d['metadata']['name']}: service account token mounted")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            where = f"{label}: {d['metadata']['name']}/{c['name']}"
            need(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: not non-root")
            need(int(sc.get("runAsUser", psc.get("runAsUser", 0))) > 0, f"{where}: runs as uid 0")
            need(sc.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem writable")
            need(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation")
            need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities kept")
            need((sc.get("seccompProfile") or psc.get("seccompProfile", {})).get("type")
                 == "RuntimeDefault", f"{where}: no RuntimeDefault seccomp profile")
            res = c.get("resources", {})
            need("memory" in res.get("requests", {}) and "cpu" in res.get("requests", {}),
                 f"{where}: cpu/memory requests missing")
            need("memory" in res.get("limits", {}), f"{where}: memory limit missing")
            need(":" in c["image"] or "@" in c["image"], f"{where}: image {c['image']} untagged")
            n += 1
    return f"{n} containers"


def check_server(docs, label, gpu):
    dep, c = server_container(docs)
    pod = dep["spec"]["template"]["spec"]
    args = server_args(c)
    flags = flag_values(args)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    need(set(ports) >= {"grpc", "metrics"}, f"{label}: container ports {ports}")
    need(flags.get("listen", "").endswith(f":{ports['grpc']}"),
         f"{label}: --listen {flags.get('listen')} is not the grpc port {ports['grpc']}")
    need(flags.get("metrics-listen", "").endswith(f":{ports['metrics']}"),
         f"{label}: --metrics-listen {flags.get('metrics-listen')} is not the metrics port")
    tls = "tls-cert" in flags
    health_port = ports["grpc"]
    if tls:
        # Kubernetes' gRPC probes are plaintext: with TLS on --listen they ask the plaintext
        # health listener, which must be a declared container port other than the TLS one.
        need("health-listen" in flags, f"{label}: TLS without --health-listen: the native gRPC "
             f"probes (plaintext) cannot reach the TLS port")
        health_port = int(flags["health-listen"].rsplit(":", 1)[1])
        need(health_port in ports.values() and health_port != ports["grpc"],
             f"{label}: --health-listen port {health_port} is not a container port of its own "
             f"({ports})")
    for probe, service in (("startupProbe", "liveness"), ("readinessProbe", "readiness"),
                           ("livenessProbe", "liveness")):
        p = c.get(probe)
        need(p, f"{label}: no {probe}")
        need("exec" not in p, f"{label}: {probe} is an exec probe (use the native gRPC probe)")
        need("grpc" in p, f"{label}: {probe} is not a native gRPC probe")
        need(p["grpc"]["port"] == health_port, f"{label}: {probe} port {p['grpc']['port']}")
        need(p["grpc"].get("service", "") in HEALTH_NAMES,
             f"{label}: {probe} asks for service {p['grpc'].get('service')!r}, which hyla-server "
             f"does not answer ({sorted(HEALTH_NAMES)})")
        need(p["grpc"].get("service", "") == service, f"{label}: {probe} should ask {service!r}")
    pre = c["lifecycle"]["preStop"]
    pre_s = pre["sleep"]["seconds"] if "sleep" in pre else int(pre["exec"]["command"][-1])
    drain = parse_duration_s(flags["drain-deadline"])
    grace = pod["terminationGracePeriodSeconds"]
    need(grace >= pre_s + drain + 5, f"{label}: terminationGracePeriodSeconds {grace} < preStop "
         f"{pre_s} s + drain deadline {drain} s + 5 s margin")
    age = parse_duration_s(flags.get("max-connection-age", "0"))
    age_grace = parse_duration_s(flags.get("max-connection-age-grace", "0"))
    need(age > 0 and age_grace >= LONGEST_STREAM_S and age_grace > drain,
         f"{label}: max-connection-age {age} s / grace {age_grace} s: the grace must outlast "
         f"the longest stream ({LONGEST_STREAM_S} s) and the drain deadline")
    limits = c["resources"].get("limits", {})
    if gpu:
        need(str(limits.get("nvidia.com/gpu")) == "1", f"{label}: no nvidia.com/gpu limit")
        need(pod.get("nodeSelector", {}).get("nvidia.com/gpu.present") == "true",
             f"{label}: no GPU node selector")
        need(any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
                 for t in pod.get("tolerations", [])), f"{label}: no nvidia.com/gpu toleration")
    else:
        need("nvidia.com/gpu" not in limits, f"{label}: CPU overlay asks for a GPU")
        need(not pod.get("tolerations"), f"{label}: CPU overlay tolerates taints")
    return (f"probes {sorted(HEALTH_NAMES & {'readiness', 'liveness'})}, grace {grace} s >= "
            f"{pre_s} + {drain:g} + 5, connection age {age:g} s + grace {age_grace:g} s")


def check_wiring(docs, label):
    dep, c = server_container(docs)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    need(selects(dep["spec"]["selector"]["matchLabels"], pod_labels), f"{label}: selector")
    svc = find(docs, "Service", "hyla")
    headless = find(docs, "Service", "hyla-endpoints")
    need(selects(svc["spec"]["selector"], pod_labels), f"{label}: Service hyla selects no pod")
    need(selects(headless["spec"]["selector"], pod_labels), f"{label}: hyla-endpoints")
    need(headless["spec"].get("clusterIP") == "None", f"{label}: hyla-endpoints not headless")
    cports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        need(p["targetPort"] in cports, f"{label}: Service port {p['name']} -> {p['targetPort']}")
    need({p["name"] for p in svc["spec"]["ports"]} >= {"grpc", "metrics"}, f"{label}: ports")
    sm = find(docs, "ServiceMonitor", "hyla")
    need(selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
         f"{label}: the ServiceMonitor does not select Service hyla")
    need(not selects(sm["spec"]["selector"]["matchLabels"], headless["metadata"]["labels"]),
         f"{label}: the ServiceMonitor also selects the headless Service (double scrape)")
    need(sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]},
         f"{label}: ServiceMonitor port")
    need(sm["spec"]["endpoints"][0]["path"] == "/metrics", f"{label}: ServiceMonitor path")
    pdb = find(docs, "PodDisruptionBudget", "hyla")
    need(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels), f"{label}: PDB selector")
    hpa = find(docs, "HorizontalPodAutoscaler", "hyla")
    ref = hpa["spec"]["scaleTargetRef"]
    need(ref["kind"] == "Deployment" and ref["name"] == "hyla", f"{label}: HPA target {ref}")
    need(hpa["spec"]["minReplicas"] >= 2, f"{label}: HPA minReplicas < 2 (PDB cannot hold)")
    adapter_names = {r["name"]["as"] for r in load_yaml(ADAPTER)["rules"]}
    for m in hpa["spec"]["metrics"]:
        need(m["type"] == "Pods" and m["pods"]["metric"]["name"] in adapter_names,
             f"{label}: HPA metric {m} is not served by deploy/prometheus/adapter-rules.yaml")
    # NetworkPolicy: Envoy may reach the server's gRPC port, Prometheus its metrics port.
    np = find(docs, "NetworkPolicy", "hyla")
    need(selects(np["spec"]["podSelector"]["matchLabels"], pod_labels), f"{label}: np selector")
    envoy = find(docs, "Deployment", "hyla-envoy")
    envoy_labels = envoy["spec"]["template"]["metadata"]["labels"]
    allowed = {}
    for rule in np["spec"]["ingress"]:
        for src in rule.get("from", []):
            for p in rule.get("ports", []):
                allowed.setdefault(p["port"], []).append(src)
    need(any(selects(s.get("podSelector", {}).get("matchLabels"), envoy_labels) and
             "namespaceSelector" not in s for s in allowed.get(cports["grpc"], [])),
         f"{label}: the NetworkPolicy does not let Envoy reach port {cports['grpc']}")
    need(allowed.get(cports["metrics"]), f"{label}: nobody may scrape port {cports['metrics']}")
    enp = find(docs, "NetworkPolicy", "hyla-envoy")
    need(any(selects(t.get("podSelector", {}).get("matchLabels"), pod_labels)
             for r in enp["spec"]["egress"] for t in r.get("to", [])),
         f"{label}: Envoy's NetworkPolicy does not allow egress to hyla")
    # Envoy's ConfigMap is envoy.yaml, mounted where its args point.
    cm = find_prefix(docs, "ConfigMap", "hyla-envoy")
    want = ENVOY_TLS if "tls-cert" in flag_values(server_args(c)) else ENVOY
    need(cm["data"]["envoy.yaml"] == open(want, encoding="utf-8").read(),
         f"{label}: the Envoy ConfigMap is not {os.path.relpath(want, ROOT)}")
    ec = envoy["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in ec["volumeMounts"]}
    vols = {v["name"]: v for v in envoy["spec"]["template"]["spec"]["volumes"]}
    cfg_vol = [n for n, v in vols.items() if v.get("configMap", {}).get("name") ==
               cm["metadata"]["name"]]
    need(cfg_vol, f"{label}: Envoy does not mount ConfigMap {cm['metadata']['name']}")
    need(ec["args"][ec["args"].index("--config-path") + 1] ==
         os.path.join(mounts[cfg_vol[0]], "envoy.yaml"), f"{label}: Envoy --config-path")
    env_doc = yaml.safe_load(cm["data"]["envoy.yaml"])
    for cl in env_doc["static_resources"]["clusters"]:
        if not cl["name"].startswith("hyla_"):
            continue
        addr = cl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"]
        need(addr["address"] == headless["metadata"]["name"], f"{label}: Envoy cluster "
             f"{cl['name']} resolves {addr['address']}, not the headless Service")
        need(addr["port_value"] == cports["grpc"], f"{label}: Envoy cluster port")
    # Envoy's keepalive pings must respect the server's minimum ping interval.
    flags = flag_values(server_args(c))
    min_ping = parse_duration_s(flags.get("keepalive-min-ping-interval", "300s"))
    for cl in env_doc["static_resources"]["clusters"]:
        opts = cl.get("typed_extension_protocol_options", {})
        for o in opts.values():
            ka = o["explicit_http_config"]["http2_protocol_options"].get("connection_keepalive")
            if ka:
                need(parse_duration_s(ka["interval"]) >= min_ping,
                     f"{label}: Envoy pings every {ka['interval']}, the server allows "
                     f"one per {min_ping:g} s (GOAWAY too_many_pings)")
    return (f"selectors, ports, ServiceMonitor, PDB, HPA->adapter, NetworkPolicies, Envoy "
            f"ConfigMap and upstream ({headless['metadata']['name']}:{cports['grpc']})")


def check_server_flags(docs, label, hyla_server):
    """Every rendered hyla-server argument goes through the real flag parser."""
    _, c = server_container(docs)
    args = server_args(c)
    # Only the parser is under test: a sanitizer build's leak report at exit is not.
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    p = run([hyla_server] + args + ["--help"], timeout=30, env=env)
    need(p.returncode == 0, f"{label}: hyla-server rejects the manifest's flags "
         f"({' '.join(args)}): {p.stderr.strip()}")
    return f"{len(args)} flags accepted"


def parse_envoy(path):
    """Parses an Envoy bootstrap YAML as Envoy's v3 API messages (unknown fields, wrong types
    and enum values are errors)."""
    doc = load_yaml(path)

    def walk(x):
        if isinstance(x, dict):
            if "@type" in x:
                importlib.import_module(
                    "envoy_data_plane." + x["@type"].split("/")[-1].rsplit(".", 1)[0])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(doc)
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap  # noqa: PLC0415
    try:
        Bootstrap.from_dict(doc)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckError(f"{path} is not a valid Envoy v3 Bootstrap: {e}") from None
    return doc


def check_envoy():
    doc = parse_envoy(ENVOY)
    tls = parse_envoy(ENVOY_TLS)
    need(open(ENVOY_TLS, encoding="utf-8").read() == envoy_tls_text(),
         "deploy/components/tls/envoy-upstream-tls.yaml is stale: run "
         "`python3 tests/deploy/deploy_checks.py sync`")
    need(sum(1 for c in tls["static_resources"]["clusters"] if "transport_socket" in c) == 2,
         "envoy-upstream-tls.yaml: both hyla clusters need TLS")
    clusters = {c["name"]: c for c in doc["static_resources"]["clusters"]}
    grpc = [lst for lst in doc["static_resources"]["listeners"] if lst["name"] == "grpc"][0]
    hcm = grpc["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    need(len(routes) == 2, "envoy: expected the session route and the default route")
    sess, default = routes
    need([h["name"] for h in sess["match"].get("headers", [])] == ["session-id"] and
         sess["match"]["headers"][0].get("present_match") is True,
         "envoy: the first route must match requests that carry session-id")
    need(sess["route"]["hash_policy"] == [{"header": {"header_name": "session-id"}}],
         "envoy: the session route must hash on the session-id header")
    need(clusters[sess["route"]["cluster"]]["lb_policy"] == "RING_HASH",
         "envoy: the session route's cluster must use RING_HASH")
    need("headers" not in default["match"] and default["match"].get("prefix") == "/",
         "envoy: the default route must take every other call")
    need(clusters[default["route"]["cluster"]]["lb_policy"] == "LEAST_REQUEST",
         "envoy: the default route's cluster must use LEAST_REQUEST")
    for r in routes:
        name = r["name"]
        need("grpc" in r["match"], f"envoy: route {name} does not match gRPC only")
        need(parse_duration_s(r["route"].get("timeout", "15s")) == 0,
             f"envoy: route {name} has a timeout (Envoy's default 15 s cuts streams)")
        need(parse_duration_s(r["route"]["max_stream_duration"]["grpc_timeout_header_max"]) == 0,
             f"envoy: route {name} caps the client's grpc-timeout")
        need(r["route"]["retry_policy"]["retry_on"] == "unavailable",
             f"envoy: route {name} retries on more than UNAVAILABLE")
        need("per_try_timeout" not in r["route"]["retry_policy"],
             f"envoy: route {name} has a per-try timeout (it would cut and retry streams)")
    preds = [p["name"] for p in default["route"]["retry_policy"].get("retry_host_predicate", [])]
    need(preds == ["envoy.retry_host_predicates.previous_hosts"],
         "envoy: stateless retries must go to another replica")
    need("retry_host_predicate" not in sess["route"]["retry_policy"],
         "envoy: session retries must stay on the replica that holds the session")
    need(parse_duration_s(hcm.get("stream_idle_timeout", "300s")) >= 600,
         "envoy: stream_idle_timeout shorter than 10 min")
    for c in clusters.values():
        if c["name"].startswith("hyla_"):
            hc = c["health_checks"][0]["grpc_health_check"]
            need(hc.get("service_name") in HEALTH_NAMES - {""},
                 f"envoy: {c['name']} health-checks {hc}")
            need(c["type"] == "STRICT_DNS", f"envoy: {c['name']} must resolve every pod")
    need(doc["admin"]["address"]["socket_address"]["address"] == "127.0.0.1",
         "envoy: the admin interface must listen on 127.0.0.1 only")
    return "Envoy v3 Bootstrap; ring hash on session-id, least request otherwise, no route " \
           "timeout, retry_on=unavailable only"


def prometheusrule_text():
    """deploy/base/prometheusrule.yaml as generated from rules.yaml (comments kept)."""
    lines = open(RULES, encoding="utf-8").read().splitlines()
    start = lines.index("groups:")
    body = "\n".join(("  " + ln) if ln.strip() else "" for ln in lines[start:])
    return ("# GENERATED from deploy/prometheus/rules.yaml by\n"
            "#   python3 tests/deploy/deploy_checks.py sync\n"
            "# Do not edit: edit rules.yaml (tests/deploy fails when the two differ).\n"
            "apiVersion: monitoring.coreos.com/v1\n"
            "kind: PrometheusRule\n"
            "metadata:\n"
            "  name: hyla\n"
            "  labels:\n"
            "    app.kubernetes.io/name: hyla\n"
            "spec:\n" + body + "\n")


ENVOY_TLS_SOCKET = """\
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
          sni: hyla-endpoints
          common_tls_context:
            alpn_protocols: ["h2"]
            validation_context:
              trusted_ca:
                filename: /etc/hyla-envoy/tls/ca.crt
              match_typed_subject_alt_names:
                - san_type: DNS
                  matcher:
                    exact: hyla-endpoints
"""


def envoy_tls_text():
    """deploy/components/tls/envoy-upstream-tls.yaml: envoy.yaml plus upstream TLS."""
    out = ["# GENERATED from deploy/envoy/envoy.yaml by\n"
           "#   python3 tests/deploy/deploy_checks.py sync\n"
           "# Do not edit: the same configuration plus TLS to hyla-server (the\n"
           "# transport_socket of the hyla clusters, trusting ca.crt of the Secret hyla-tls).\n"]
    for line in open(ENVOY, encoding="utf-8").read().splitlines(keepends=True):
        out.append(line)
        if line.strip() in ("lb_policy: RING_HASH", "lb_policy: LEAST_REQUEST"):
            out.append(ENVOY_TLS_SOCKET)
    return "".join(out)


def check_rules(promtool):
    p = run([promtool, "check", "rules", RULES])
    need(p.returncode == 0, f"promtool check rules: {p.stdout}{p.stderr}")
    p = run([promtool, "test", "rules", RULES_TEST], cwd=os.path.dirname(RULES_TEST))
    need(p.returncode == 0, f"promtool test rules: {p.stdout}{p.stderr}")
    rules_doc = load_yaml(RULES)
    alerts = [r["alert"] for g in rules_doc["groups"] for r in g["rules"] if "alert" in r]
    tested = set()
    for t in load_yaml(RULES_TEST)["tests"]:
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                tested.add(a["alertname"])
    need(set(alerts) <= tested, f"alerts without a firing unit test: {set(alerts) - tested}")
    need({"HylaTimeToFirstTokenP99High", "HylaHighErrorRate", "HylaStateMemoryNearCapacity",
          "HylaNoReadyReplicas"} <= set(alerts), f"missing alerts: {alerts}")
    documented = re.findall(r"`(hyla:[a-z_0-9:]+)`", open(
        os.path.join(ROOT, "docs", "metrics.md"), encoding="utf-8").read())
    need(set(documented) <= recorded_names(rules_doc),
         f"docs/metrics.md names recording rules that rules.yaml lacks: "
         f"{set(documented) - recorded_names(rules_doc)}")
    need(open(PROMRULE, encoding="utf-8").read() == prometheusrule_text(),
         "deploy/base/prometheusrule.yaml differs from rules.yaml: run "
         "`python3 tests/deploy/deploy_checks.py sync`")
    return f"{len(alerts)} alerts each with a firing test, PrometheusRule == rules.yaml"


def check_adapter():
    doc = load_yaml(ADAPTER)
    for r in doc["rules"]:
        need(set(r) == {"seriesQuery", "resources", "name", "metricsQuery"}, f"adapter: keys {r}")
        need(r["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                             "pod": {"resource": "pod"}},
             "adapter: series must map namespace and pod labels to resources")
        series = adapter_series_name(r)
        need(re.fullmatch(r["name"]["matches"], series), f"adapter: {r['name']} vs {series}")
        for ph in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            need(ph in r["metricsQuery"], f"adapter: metricsQuery lacks {ph}")
        need(not re.findall(r"<<(?!\.Series>>|\.LabelMatchers>>|\.GroupBy>>)", r["metricsQuery"]),
             "adapter: unknown template placeholder")
    return f"{len(doc['rules'])} rules"


def check_dashboard():
    dash = json.load(open(DASHBOARD, encoding="utf-8"))
    p = run([sys.executable, os.path.join(DEPLOY, "grafana", "build_dashboard.py"), "--check"])
    need(p.returncode == 0, f"dashboard JSON is stale: {p.stderr.strip()}")
    ids = []

    def walk(panels):
        for pn in panels:
            ids.append(pn["id"])
            need("gridPos" in pn and pn.get("title"), f"panel {pn.get('id')} lacks gridPos/title")
            if pn["type"] != "row":
                need(pn.get("targets"), f"panel {pn['title']!r} has no query")
                need(pn["datasource"]["uid"] == "${datasource}", f"panel {pn['title']!r} ds")
            walk(pn.get("panels", []))
    walk(dash["panels"])
    need(len(ids) == len(set(ids)), "duplicate panel ids")
    titles = " | ".join(pn["title"].lower() for pn in dash["panels"])
    for topic in ("request rate", "errors by code", "time to first token", "inter-token",
                  "end-to-end", "tokens per second", "queue", "batch size",
                  "state memory by pool against capacity",
                  "per-session memory against context length", "softmax", "nats-l", "sessions",
                  "evictions"):
        need(topic in titles, f"the dashboard has no panel about {topic!r}")
    used, records = all_used_metric_names()
    dash_records = {m for _, e in dashboard_exprs(dash) for m in promql_metric_names(e)
                    if ":" in m}
    need(dash_records <= records, f"dashboard uses undefined recording rules "
         f"{dash_records - records}")
    return f"{len(ids)} panels, {len(dashboard_exprs(dash))} queries"


def check_dockerfiles():
    out = []
    for name, base_re in (("Dockerfile", r"nvidia/cuda:[^ ]*-runtime-"),
                          ("Dockerfile.cpu", r"debian:12-slim")):
        text = open(os.path.join(ROOT, name), encoding="utf-8").read()
        stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
        need(len(stages) >= 2, f"{name}: not multi-stage")
        need(re.match(base_re, stages[-1][0]), f"{name}: final stage {stages[-1][0]}")
        final = text[text.rfind("\nFROM "):]
        need("scripts/setup.sh" in text, f"{name}: does not build with scripts/setup.sh")
        user = re.findall(r"^USER\s+(\S+)", final, re.M)
        need(user and user[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as root")
        need(re.search(r"^HEALTHCHECK\b.*\bhyla\b.*\bhealth\b", final, re.M | re.S),
             f"{name}: no HEALTHCHECK through `hyla health`")
        need(re.search(r'^ENTRYPOINT\s+\[\s*"', final, re.M), f"{name}: ENTRYPOINT not exec form")
        need(re.search(r"models/default\S* \S*/usr/local/share/hyla/models", text) and
             "COPY --from=build /opt/rootfs/ /" in final,
             f"{name}: the default model is not in the image")
        out.append(f"{name}: {len(stages)} stages, final {stages[-1][0]}")
    ignore = open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8").read().split()
    for must in ("build*", ".git"):
        need(must in ignore, f".dockerignore does not exclude {must}")
    return "; ".join(out)


def cmd_static(args):
    res = Results()
    res.run("promql name extraction self-test", self_test_promql_names)
    kubectl = args.kubectl or venv_tool("kubectl")
    if not res.check(kubectl, "kubectl found", kubectl or "no kubectl: run scripts/setup.sh"):
        return res.finish()
    version = run([kubectl, "version", "--client"]).stdout.replace("\n", " ").strip()
    print(f"using {kubectl}: {version}")
    tmp = tempfile.mkdtemp(prefix="hyla-deploy-")
    try:
        renders = {}
        for ov in OVERLAYS:
            renders[ov] = None
            if res.run(f"kubectl kustomize deploy/{ov}",
                       lambda ov=ov: (renders.__setitem__(ov, kustomize(
                           kubectl, os.path.join(DEPLOY, ov))) or
                           f"{len(renders[ov])} objects")):
                pass
        for comp in COMPONENTS:
            renders[comp] = None
            res.run(f"kubectl kustomize deploy/overlays/cpu + deploy/{comp}",
                    lambda comp=comp: (renders.__setitem__(comp, render_with_component(
                        kubectl, comp, tmp)) or f"{len(renders[comp])} objects"))
        res.run("kubectl kustomize deploy/grafana",
                lambda: (renders.__setitem__("grafana", kustomize(
                    kubectl, os.path.join(DEPLOY, "grafana"))) or "dashboard ConfigMap"))
        for label, docs in renders.items():
            if docs is None:
                continue
            res.run(f"{label}: schemas (Kubernetes {', '.join(K8S_VERSIONS)} strict; CRDs)",
                    lambda docs=docs, label=label: validate_k8s(docs, label))
            if label == "grafana":
                cm = docs[0]
                res.check(json.loads(cm["data"]["hyla.json"]) == json.load(
                    open(DASHBOARD, encoding="utf-8")) and
                    cm["metadata"]["labels"].get("grafana_dashboard") == "1",
                    "grafana: ConfigMap holds the dashboard with the sidecar label")
                continue
            res.run(f"{label}: security context and resources",
                    lambda docs=docs, label=label: check_security(docs, label))
            res.run(f"{label}: server probes, shutdown, connection age, scheduling",
                    lambda docs=docs, label=label: check_server(docs, label, label.endswith("gpu")))
            res.run(f"{label}: wiring", lambda docs=docs, label=label: check_wiring(docs, label))
            if args.hyla_server:
                res.run(f"{label}: hyla-server accepts every argument",
                        lambda docs=docs, label=label: check_server_flags(
                            docs, label, args.hyla_server))
        res.run("envoy.yaml", check_envoy)
        promtool = args.promtool or shutil.which("promtool")
        if res.check(promtool, "promtool found", promtool or "install Debian `prometheus`"):
            res.run("prometheus rules (check, unit tests, PrometheusRule sync)",
                    lambda: check_rules(promtool))
        res.run("adapter rules", check_adapter)
        res.run("grafana dashboard", check_dashboard)
        res.run("Dockerfiles", check_dockerfiles)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res.finish()


# ---- processes -----------------------------------------------------------------------------------

class Server:
    """A hyla-server on 127.0.0.1 with OS-chosen ports; stderr is collected by a thread."""

    def __init__(self, binary, extra_args=(), timeout=60):
        self.proc = subprocess.Popen(
            [binary, "--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0", *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        self.log = []
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.grpc = self.metrics = None
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            m = re.search(r"listening grpc=(\S+) metrics=(\S+)", line)
            if m:
                self.grpc, self.metrics = m.group(1), m.group(2)
                return
        self.stop()
        raise CheckError("hyla-server did not start: " + "".join(self.log[-20:]))

    def _pump(self):
        for line in self.proc.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_log(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, ln) for ln in self.log):
                return True
            try:
                if self.lines.get(timeout=max(0.01, deadline - time.monotonic())) is None:
                    break
            except queue.Empty:
                break
        return any(re.search(pattern, ln) for ln in self.log)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - 127.0.0.1 only
        return r.read().decode()


def send_traffic(hyla, server, n=6):
    """Generate calls with the real client: some in a session, some without."""
    for i in range(n):
        cmd = [hyla, "--server", server, "--timeout", "60s", "generate", "--max-tokens", "24",
               "--seed", str(i), f"hello hyla {i}"]
        p = run(cmd, timeout=90)
        need(p.returncode == 0, f"`{' '.join(cmd)}` failed: {p.stderr.strip()}")
    p = run([hyla, "--server", server, "session", "create", "--session", "deploy-check",
             "a shared prefix"], timeout=60)
    need(p.returncode == 0, f"hyla session create failed: {p.stderr.strip()}")
    p = run([hyla, "--server", server, "generate", "--session", "deploy-check", "--max-tokens",
             "16", " and more"], timeout=60)
    need(p.returncode == 0, f"hyla generate --session failed: {p.stderr.strip()}")
    return n + 1


def scrape_names(text):
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return names


def cmd_scrape(args):
    res = Results()
    server = Server(args.hyla_server)
    try:
        res.run("traffic with the hyla client", lambda: f"{send_traffic(args.hyla, server.grpc)} "
                f"calls to {server.grpc}")
        text = http_get(f"http://{server.metrics}/metrics")
        p = subprocess.run([args.promtool, "check", "metrics"], input=text, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        res.check(p.returncode == 0, "promtool check metrics", p.stdout + p.stderr)
        scraped = scrape_names(text)
        used, records = all_used_metric_names()
        missing = {}
        for name, where in used.items():
            if name in records or name in EXTERNAL_METRICS:
                continue
            if name not in scraped:
                missing[name] = sorted(where)
        res.check(not missing, "every metric the dashboard, rules, HPA and adapter use is "
                  "exported by hyla-server",
                  json.dumps(missing, indent=1) if missing else
                  f"{len([n for n in used if n not in records and n not in EXTERNAL_METRICS])} "
                  f"names found among {len(scraped)} scraped")
        unknown_records = {n for n in used if ":" in n and n not in records}
        res.check(not unknown_records, "every recording rule used is defined in rules.yaml",
                  f"undefined: {sorted(unknown_records)}" if unknown_records else
                  f"{len([n for n in used if ':' in n])} recording rules used")
    finally:
        rc = server.stop()
        res.check(rc == 0, "hyla-server exits 0 on SIGTERM", f"exit code {rc}")
    return res.finish()


# ---- Prometheus integration ------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prom_query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(http_get(url))
    except urllib.error.HTTPError as e:
        body = json.loads(e.read().decode())
    need(body.get("status") == "success", f"query {expr!r}: {body.get('error', body)}")
    return body["data"]["result"]


def wait_for(what, fn, timeout):
    """Polls fn() until it returns a truthy value or `timeout` s pass (then fails)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except (CheckError, OSError, ValueError) as e:
            last = e
        time.sleep(0.25)
    raise CheckError(f"timed out after {timeout} s waiting for {what}" +
                     (f" (last error: {last})" if last else ""))


def cmd_prometheus(args):
    res = Results()
    tmp = tempfile.mkdtemp(prefix="hyla-prom-")
    server = prom = None
    try:
        server = Server(args.hyla_server)
        ns, pod = "hyla-it", "hyla-it-0"
        shutil.copy(RULES, os.path.join(tmp, "rules.yaml"))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [{
                # What the ServiceMonitor produces: job = Service name, namespace and pod labels.
                "job_name": "hyla", "metrics_path": "/metrics",
                "static_configs": [{"targets": [server.metrics],
                                    "labels": {"namespace": ns, "pod": pod}}]}],
        }
        with open(os.path.join(tmp, "prometheus.yml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f)
        base = None
        for _ in range(5):  # a port taken between free_port() and the bind: try another
            port = free_port()
            prom = subprocess.Popen(
                [args.prometheus, f"--config.file={tmp}/prometheus.yml",
                 f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "prom.log"), "w"))
            base = f"http://127.0.0.1:{port}"
            try:
                wait_for("Prometheus /-/ready", lambda: prom.poll() is None and
                         "Ready" in http_get(f"{base}/-/ready"), 30)
                break
            except CheckError:
                if prom.poll() is None:
                    raise
                prom = None
        need(prom is not None, "Prometheus did not start: " +
             open(os.path.join(tmp, "prom.log")).read()[-2000:])
        res.ok("Prometheus started", f"{args.prometheus} on {base}, hyla-server metrics at "
               f"{server.metrics}")

        def target_up():
            t = json.loads(http_get(f"{base}/api/v1/targets"))["data"]["activeTargets"]
            return t and t[0]["health"] == "up" and t[0]["lastScrape"][:4] != "0001"
        res.run("hyla-server target scraped (up)", lambda: wait_for("target up", target_up, 30)
                and "health up")
        def rules_loaded():
            groups = json.loads(http_get(f"{base}/api/v1/rules"))["data"]["groups"]
            n = sum(len(g["rules"]) for g in groups)
            need(n == len(rules_exprs(load_yaml(RULES))), f"{n} rules loaded")
            return f"{n} rules"
        res.run("rules.yaml loaded by Prometheus", rules_loaded)
        res.run("traffic with the hyla client",
                lambda: f"{send_traffic(args.hyla, server.grpc)} calls")
        checks = [
            ('hyla:requests:rate5m{method="Generate",code="OK"}', lambda v: v > 0),
            ("hyla:generated_tokens:rate1m", lambda v: v > 0),
            ("hyla:time_to_first_token_seconds:p99_5m", lambda v: v > 0),
            ("hyla:inter_token_latency_seconds:p99_5m", lambda v: v > 0),
            ("hyla:errors:ratio_rate5m", lambda v: v == 0),
            ("hyla:state_memory:utilization", lambda v: 0 <= v <= 1),
        ]
        for expr, ok in checks:
            def probe(expr=expr, ok=ok):
                r = prom_query(base, expr)
                return r and all(ok(float(s["value"][1])) for s in r) and r
            res.run(f"recording rule {expr} has data",
                    lambda expr=expr, probe=probe: "value " + ", ".join(
                        f"{s['value'][1]} {s['metric'].get('namespace')}/{s['metric'].get('job')}"
                        for s in wait_for(expr, probe, 60)))
        for rule in load_yaml(ADAPTER)["rules"]:
            series = adapter_series_name(rule)
            q = adapter_render(rule["metricsQuery"], series, ns, [pod])

            def adapter_probe(q=q):
                r = prom_query(base, q)
                return len(r) == 1 and r[0]["metric"] == {"pod": pod} and r
            res.run(f"adapter query for {rule['name']['as']}",
                    lambda q=q, p=adapter_probe: f"{q} -> {wait_for(q, p, 30)[0]['value'][1]}")
        dash = json.load(open(DASHBOARD, encoding="utf-8"))
        n_ok = 0
        empty = []
        for title, expr in dashboard_exprs(dash):
            e = (expr.replace("$__rate_interval", "30s").replace("$namespace", ns)
                 .replace("$job", "hyla"))
            try:
                r = prom_query(base, e)
                n_ok += 1
                if not r:
                    empty.append(title)
            except CheckError as err:
                res.fail(f"dashboard query of {title!r}", str(err))
        res.check(n_ok == len(dashboard_exprs(dash)), "every dashboard query runs in Prometheus",
                  f"{n_ok} queries; with no data yet: {sorted(set(empty)) or 'none'}")
    except CheckError as e:
        res.fail("prometheus integration", str(e))
    finally:
        if prom is not None and prom.poll() is None:
            prom.terminate()
            try:
                prom.wait(30)
            except subprocess.TimeoutExpired:
                prom.kill()
        if server is not None:
            rc = server.stop()
            res.check(rc == 0, "hyla-server exits 0 on SIGTERM", f"exit code {rc}")
        shutil.rmtree(tmp, ignore_errors=True)
    return res.finish()


# ---- gRPC on the wire ----------------------------------------------------------------------------

def pb_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_field(num, wire, payload):
    key = pb_varint((num << 3) | wire)
    if wire == 0:
        return key + pb_varint(payload)
    return key + pb_varint(len(payload)) + payload


def generate_request(text, max_new_tokens):
    """hyla.v1.GenerateRequest{text, stopping{max_new_tokens}} (proto/hyla/v1/hyla.proto)."""
    stopping = pb_field(1, 0, max_new_tokens)
    msg = pb_field(1, 2, text.encode()) + pb_field(5, 2, stopping)
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


class H2Call:
    """One gRPC call over its own HTTP/2 connection, recording the frames it receives."""

    def __init__(self, address, path, body, window=65535):
        import h2.config  # noqa: PLC0415
        import h2.connection  # noqa: PLC0415
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.local_settings.initial_window_size = window
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.sid, [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", address), ("content-type", "application/grpc"), ("te", "trailers")])
        self.conn.send_data(self.sid, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.events = []  # ("headers", dict, end_stream) | ("data", bytes)
        self.ended = False

    def pump(self, until, timeout):
        import h2.events  # noqa: PLC0415
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                raw = self.sock.recv(65536)
            except socket.timeout:
                break
            if not raw:
                break
            for ev in self.conn.receive_data(raw):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)) and \
                        ev.stream_id == self.sid:
                    hdrs = {k.decode() if isinstance(k, bytes) else k:
                            v.decode() if isinstance(v, bytes) else v for k, v in ev.headers}
                    self.events.append(("headers", hdrs, ev.stream_ended is not None))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == self.sid:
                    self.events.append(("data", ev.data))
                if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == self.sid:
                    self.ended = True
                    if self.events and self.events[-1][0] == "headers":
                        self.events[-1] = ("headers", self.events[-1][1], True)
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
        return until()

    def open_window(self):
        self.conn.increment_flow_control_window(1 << 24)
        self.conn.increment_flow_control_window(1 << 24, stream_id=self.sid)
        self.sock.sendall(self.conn.data_to_send())

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def cmd_grpc_wire(args):
    res = Results()
    path = "/hyla.v1.Hyla/Generate"
    server = Server(args.hyla_server, ["--drain-deadline=60s", "--stall-timeout=60s",
                                       "--max-pending-tokens=1"])
    held = refused = None
    try:
        # 1. A normal token stream: HEADERS without grpc-status, DATA, then trailers.
        call = H2Call(server.grpc, path, generate_request("hello", 8))
        call.pump(lambda: call.ended, 30)
        kinds = [e[0] for e in call.events]
        first = call.events[0] if call.events else None
        res.check(call.ended and first and first[0] == "headers" and not first[2] and
                  "grpc-status" not in first[1] and "data" in kinds and
                  call.events[-1][0] == "headers" and call.events[-1][2] and
                  call.events[-1][1].get("grpc-status") == "0",
                  "a token stream: response HEADERS carry no grpc-status; the status comes in "
                  "trailers after the tokens",
                  "frames: " + str([(e[0], e[1] if e[0] == "headers" else len(e[1]))
                                    for e in call.events]))
        call.close()
        # 2. Hold one stream open (the client grants no flow-control window, so its tokens
        #    cannot be sent), then SIGTERM: the server drains and refuses new calls.
        held = H2Call(server.grpc, path, generate_request("a long one", 1500), window=0)
        held.pump(lambda: bool(held.events), 10)
        res.check(held.events and held.events[0][0] == "headers" and
                  "grpc-status" not in held.events[0][1],
                  "a held stream got its response HEADERS (no status) before any token",
                  f"frames: {held.events[:1]}")
        server.proc.send_signal(signal.SIGTERM)
        need(server.wait_log(r"draining", 10), "hyla-server did not log that it drains")
        # The log line comes just before the server flips to draining: a call that still gets
        # in completes normally; try again until one is refused (bounded).
        deadline = time.monotonic() + 10
        while True:
            refused = H2Call(server.grpc, path, generate_request("refused?", 4))
            refused.pump(lambda: refused.ended, 10)
            ev = refused.events
            first = ev[0][1] if ev and ev[0][0] == "headers" else {}
            if "grpc-status" in first or time.monotonic() > deadline:
                break
            refused.close()
        res.check(len(ev) == 1 and ev[0][0] == "headers" and ev[0][2] and
                  ev[0][1].get("grpc-status") == "14" and ev[0][1].get(":status") == "200",
                  "a call refused while draining is Trailers-Only: one HEADERS frame with "
                  "END_STREAM and grpc-status 14 (what Envoy's retry_on=unavailable reads)",
                  f"frames: {ev}")
        # 3. Release the held stream: its tokens flow and it completes within the drain.
        held.open_window()
        held.pump(lambda: held.ended, 30)
        last = held.events[-1] if held.events else None
        res.check(held.ended and last and last[0] == "headers" and
                  last[1].get("grpc-status") == "0" and
                  sum(1 for e in held.events if e[0] == "data") >= 1,
                  "the held stream finishes OK during the drain (status in trailers)",
                  f"{sum(1 for e in held.events if e[0] == 'data')} DATA frames, last {last}")
    except CheckError as e:
        res.fail("grpc wire check", str(e))
    finally:
        for c in (held, refused):
            if c is not None:
                c.close()
        rc = server.stop()
        res.check(rc == 0, "hyla-server exits 0 after the drain", f"exit code {rc}")
    return res.finish()


def cmd_sync(_args):
    with open(PROMRULE, "w", encoding="utf-8") as f:
        f.write(prometheusrule_text())
    need(yaml.safe_load(open(PROMRULE, encoding="utf-8"))["spec"]["groups"] ==
         load_yaml(RULES)["groups"], "generated PrometheusRule differs from rules.yaml")
    print(f"wrote {PROMRULE}")
    with open(ENVOY_TLS, "w", encoding="utf-8") as f:
        f.write(envoy_tls_text())
    print(f"wrote {ENVOY_TLS}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("static")
    s.add_argument("--kubectl")
    s.add_argument("--promtool")
    s.add_argument("--hyla-server", help="check the manifests' flags with this binary")
    for name in ("scrape", "prometheus", "grpc-wire"):
        p = sub.add_parser(name)
        p.add_argument("--hyla-server", required=True)
        p.add_argument("--hyla", required=name != "grpc-wire")
        p.add_argument("--promtool", default=shutil.which("promtool"))
        p.add_argument("--prometheus", default=shutil.which("prometheus"))
    sub.add_parser("sync")
    args = ap.parse_args()
    fn = {"static": cmd_static, "scrape": cmd_scrape, "prometheus": cmd_prometheus,
          "grpc-wire": cmd_grpc_wire, "sync": cmd_sync}[args.cmd]
    return fn(args)


if __name__ == "__main__":
    sys.exit(main())
