#!/usr/bin/env python3
"""Checks the Helm charts under deploy/helm (run by scripts/test through check_charts).

For every chart and several value sets each: renders with the Helm SDK (PyPI
helm-python-sdk, Helm's Go SDK as a library), lints strictly, validates every rendered
object strictly against the Kubernetes 1.33 schemas (kubernetes-validate, the same
function its `--strict` command line runs; CRDs, which that schema set lacks, are checked
structurally here), and asserts what would be real mistakes: selectors, the governing
Service, probes, non-root, RBAC, the config file's keys, the checksum annotation, the
dashboards' copies, the nats-tenant chart against the provisioner's golden objects, the
test hook's script against a fake node, the platform's nats.conf with `nats-server -t`,
each vrsky value set's rendered vrsky.toml against its golden copy
vrsky/tests/config-<slug>.toml (which the runtime's own test loads with Config::load),
vrsky/files/config-schema.yaml against README.md's Configuration table, and renders that
must fail (the defaults, without each required value, every configuration the runtime
refuses) with their message.

Usage: check.py [--golden PATH] [--update-configs]
  --golden PATH     another golden file for nats-tenant
  --update-configs  rewrite vrsky/tests/config-*.toml from the renders (and remove those no
                    value set renders), then check everything else as usual
Exit 0 when everything holds; 1 with one line per failure otherwise (a golden config's
mismatch is followed by its unified diff).
"""

from __future__ import annotations

import argparse
import base64
import copy
import difflib
import functools
import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import traceback
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

try:
    import helm_python as helm
except ImportError:  # pragma: no cover
    sys.exit("check.py needs helm-python-sdk (scripts/env.sh: ensure_helm_sdk)")
try:
    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils
except ImportError:  # pragma: no cover
    sys.exit("check.py needs kubernetes-validate (scripts/env.sh: ensure_kubernetes_validate)")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
K8S_VERSION = "1.33.0"
TENANTS_NS = "vrsky-tenants"

# The schemas are read from disk at every call of kubernetes_validate.validate (1.4 MB of
# definitions each time); they never change during a run, so read each once.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)

FAILURES: list[str] = []
CHECKS = 0


def check(cond: Any, where: str, message: str) -> bool:
    """Records a failure (with where it is) unless cond holds."""
    global CHECKS
    CHECKS += 1
    if not cond:
        FAILURES.append(f"{where}: {message}")
        return False
    return True


def note(message: str) -> None:
    print(f"  {message}", flush=True)


# ---------------------------------------------------------------------------------------
# Rendering, linting, validating


class Render:
    """One render of a chart: its objects (with the template each came from) and NOTES."""

    def __init__(self, chart: str, label: str, manifests: dict[str, str]):
        self.chart = chart
        self.label = label
        self.manifests = manifests
        self.objects: list[tuple[str, dict]] = []
        self.notes = ""
        for template, text in sorted(manifests.items()):
            if template.endswith("NOTES.txt"):
                self.notes = text
                continue
            if not template.endswith((".yaml", ".yml")):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append((template, doc))

    @property
    def where(self) -> str:
        return f"{self.chart} [{self.label}]"

    def all(self, kind: str) -> list[dict]:
        return [o for _, o in self.objects if o.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        if len(found) != 1:
            FAILURES.append(f"{self.where}: expected one {kind}{' ' + name if name else ''}, found {len(found)}")
            return {}
        return found[0]

    def named(self, kind: str, name: str) -> dict | None:
        for o in self.all(kind):
            if o["metadata"]["name"] == name:
                return o
        return None


@functools.lru_cache(maxsize=None)
def load_chart(name: str) -> helm.Chart:
    return helm.Chart.load(str(HERE / name))


def render(chart: str, label: str, values: dict | None, release: str, namespace: str) -> Render:
    manifests = load_chart(chart).render(values, name=release, namespace=namespace, is_install=True)
    return Render(chart, label, manifests)


def render_fails(chart: str, label: str, values: dict, expect: str, release: str, namespace: str) -> None:
    """The render must fail, and its error must say `expect`."""
    try:
        load_chart(chart).render(values, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as e:
        check(expect in str(e), f"{chart} [{label}]", f"the render failed, but without {expect!r}: {e}")
        return
    check(False, f"{chart} [{label}]", f"the render should fail ({expect!r}) but succeeded")


def guarded(where: str, fn: Callable, *args: Any) -> Any:
    """Runs fn; a failed render or a check that met objects it did not expect becomes a
    failure naming where, instead of a traceback."""
    try:
        return fn(*args)
    except helm.HelmError as e:
        check(False, where, f"helm: {e}")
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        frame = traceback.extract_tb(e.__traceback__)[-1]
        check(False, where, f"the rendered objects lack what the check reads ({type(e).__name__}: {e}, "
              f"check.py line {frame.lineno})")
    return None


def lint(chart: str, label: str, values: dict | None) -> None:
    report = helm.lint(str(HERE / chart), values, strict=True, kube_version=f"v{K8S_VERSION}")
    where = f"{chart} [{label}]"
    for e in report.get("errors") or []:
        check(False, where, f"helm lint --strict: {e}")
    for m in report.get("messages") or []:
        # 1 is info ("icon is recommended"); warnings and errors fail a strict lint.
        check(m["severity"] < 2, where, f"helm lint --strict: {m['path']}: {m['error']}")


def validate(r: Render) -> None:
    for template, obj in r.objects:
        what = f"{r.where} {template} {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion") == "monitoring.coreos.com/v1":
            check_service_monitor_shape(what, obj)
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, what, f"kubernetes-validate --strict ({K8S_VERSION}): {e.message} at {list(e.path)}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            check(False, what, f"kubernetes-validate: {e.message}")
        else:
            check(True, what, "")


def check_service_monitor_shape(what: str, sm: dict) -> None:
    """ServiceMonitor (monitoring.coreos.com/v1) is a CRD, not in the 1.33 schema set:
    its shape is checked here against the fields the operator's CRD defines."""
    check(sm.get("kind") == "ServiceMonitor", what, "kind must be ServiceMonitor")
    allowed_top = {"apiVersion", "kind", "metadata", "spec"}
    check(set(sm) <= allowed_top, what, f"unknown top-level fields {set(sm) - allowed_top}")
    spec = sm.get("spec") or {}
    allowed_spec = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
                    "sampleLimit", "scrapeProtocols", "attachMetadata"}
    check(set(spec) <= allowed_spec, what, f"unknown spec fields {set(spec) - allowed_spec}")
    check(isinstance(spec.get("selector", {}).get("matchLabels"), dict), what, "spec.selector.matchLabels must be a map")
    ns = spec.get("namespaceSelector", {})
    check(isinstance(ns.get("matchNames", []), list), what, "namespaceSelector.matchNames must be a list")
    endpoints = spec.get("endpoints")
    check(isinstance(endpoints, list) and endpoints, what, "spec.endpoints must be a non-empty list")
    allowed_ep = {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                  "honorTimestamps", "authorization", "basicAuth", "bearerTokenSecret", "tlsConfig",
                  "relabelings", "metricRelabelings", "params", "followRedirects", "enableHttp2"}
    for ep in endpoints or []:
        check(set(ep) <= allowed_ep, what, f"unknown endpoint fields {set(ep) - allowed_ep}")
        check(isinstance(ep.get("port"), str), what, "endpoint.port must be a port name")
        for dur in ("interval", "scrapeTimeout"):
            if dur in ep:
                check(re.fullmatch(r"(\d+(ms|s|m|h))+", str(ep[dur])), what, f"endpoint.{dur} {ep[dur]!r} is not a duration")
        auth = ep.get("authorization")
        if auth is not None:
            check(set(auth) <= {"type", "credentials"}, what, f"authorization: unknown fields {set(auth)}")
            creds = auth.get("credentials", {})
            check(set(creds) <= {"name", "key", "optional"} and creds.get("name") and creds.get("key"),
                  what, f"authorization.credentials must be a SecretKeySelector, got {creds}")
        for rl in ep.get("relabelings", []):
            check(set(rl) <= {"action", "sourceLabels", "separator", "targetLabel", "regex", "modulus",
                              "replacement"}, what, f"relabeling: unknown fields {set(rl)}")


# ---------------------------------------------------------------------------------------
# Small helpers over objects


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container(pod_spec: dict, name: str) -> dict:
    for c in pod_spec.get("containers", []):
        if c["name"] == name:
            return c
    return {}


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def port_number(c: dict, port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in c.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def mounted_file(pod_spec: dict, c: dict, path: str) -> tuple[str | None, str | None]:
    """(volume kind and source, key) that provides the file `path` in container c, or
    (None, why)."""
    directory, file = os.path.split(path)
    for m in c.get("volumeMounts", []):
        if m["mountPath"].rstrip("/") == directory:
            vol = next((v for v in pod_spec.get("volumes", []) if v["name"] == m["name"]), None)
            if vol is None:
                return None, f"volume {m['name']} is not defined"
            for kind in ("secret", "configMap"):
                src = vol.get(kind)
                if src is None:
                    continue
                items = src.get("items")
                if items is None:
                    return f"{kind}:{src.get('secretName') or src.get('name')}", file
                for it in items:
                    if it["path"] == file:
                        return f"{kind}:{src.get('secretName') or src.get('name')}", it["key"]
                return None, f"volume {m['name']} has no item with path {file}"
            return None, f"volume {m['name']} is neither a Secret nor a ConfigMap"
    return None, f"nothing is mounted at {directory}"


def flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """A TOML/values tree as dotted keys: {"nats": {"provisioner": "local"}} -> {"nats.provisioner": "local"}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------------------------------
# What the runtime's sources say


def config_keys() -> tuple[set[str], dict[str, str]]:
    """README.md's Configuration table (`key` | `VRSKY_...` [(or `VRSKY_...`)]): every
    configuration key, and every environment variable the table names, to its key."""
    keys: set[str] = set()
    env: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"^\| `([a-z0-9_.]+)` \| ([^|]*)\|", line)
        if not m:
            continue
        key, names = m.group(1), re.findall(r"`(VRSKY_[A-Z0-9_]+)`", m.group(2))
        if not names:
            continue
        keys.add(key)
        canonical = "VRSKY_" + key.upper().replace(".", "__")
        check(canonical in names or len(names) > 1, "README.md",
              f"the table names {names} for {key}, not its canonical {canonical}")
        for n in names:
            env[n] = key
        env.setdefault(canonical, key)
    check(len(keys) > 40, "README.md", f"the Configuration table gave only {len(keys)} keys: has its format changed?")
    return keys, env


def provisioner_api_calls() -> dict[str, set[str]]:
    """The kube API calls of runtime/src/k8s.rs: {Kind: {method, ...}}."""
    src = (ROOT / "runtime/src/k8s.rs").read_text()
    calls: dict[str, set[str]] = {}
    for var, kind in re.findall(r"let\s+(\w+)\s*:\s*Api<(\w+)>", src):
        for method in re.findall(rf"\b{var}\s*\.\s*(\w+)\s*\(", src):
            calls.setdefault(kind, set()).add(method)
    return calls


# The kube-rs Api methods and the RBAC verbs they need. `patch` is server-side apply
# here (Patch::Apply), which the API server authorizes as `create` when it makes the
# object.
KUBE_VERBS = {"patch": {"patch", "create"}, "get": {"get"}, "get_opt": {"get"}, "delete": {"delete"},
              "list": {"list"}, "watch": {"watch"}, "create": {"create"}, "replace": {"update"},
              "get_status": {"get"}, "patch_status": {"patch"}, "delete_collection": {"deletecollection"}}
KIND_RESOURCE = {"Deployment": ("apps", "deployments"), "Service": ("", "services"), "Secret": ("", "secrets"),
                 "ConfigMap": ("", "configmaps"), "Pod": ("", "pods"), "StatefulSet": ("apps", "statefulsets")}


# ---------------------------------------------------------------------------------------
# The vrsky chart

VRSKY_RELEASE, VRSKY_NS = "vrsky", "vrsky"
PLATFORM_RELEASE = "nats-platform"
PRIVATE_V4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"}
PRIVATE_V6 = {"fc00::/7", "fe80::/10"}

# The smallest values that render and start (the chart's defaults fail the render: an
# external platform NATS needs the runtime user's creds, the kubernetes provisioner the
# tenant servers' CA). Every value set but the local one starts from these.
MINIMAL = {
    "platformNats": {"creds": {"existingSecret": "vrsky-platform-user"}},
    "tenantNats": {"ca": {"existingSecret": "vrsky-tenant-nats-ca"}},
}
# What rendering without each required value says (vrsky/templates/_validate.tpl).
REQUIRED = {
    "platformNats.creds": "platformNats.creds.value (or platformNats.creds.existingSecret) is required with an external "
                          "platform NATS (platformNats.external: true): the creds file of the runtime's user, nats.platform_creds",
    "tenantNats.ca": "tenantNats.ca.value (or tenantNats.ca.existingSecret) is required with the kubernetes provisioner "
                     "(config.nats.provisioner: kubernetes): the CA that signed the tenant servers' certificate",
}

EVERYTHING = {
    "global": {"image": {"registry": "registry.example.com", "pullPolicy": "IfNotPresent",
                         "pullSecretNames": ["regcred"]}, "labels": {"team": "integrations"}},
    "replicas": 1,
    "image": {"tag": "0.1.0-test"},
    "secrets": {"adminToken": {"value": "an-admin-token-of-32-characters!"},
                "secretsKey": {"value": "q0cYkTQ4U8cQ0Vb3v1hJ8z3wH0cQ0Vb3v1hJ8z3wH0c="},
                "databaseUrl": {"value": "postgres://vrsky:pw@postgres.vrsky:5432/vrsky"}},
    "platformNats": {"creds": {"value": "-----BEGIN NATS USER JWT-----\n..."},
                     "ca": {"value": "-----BEGIN CERTIFICATE-----\n..."}},
    "tenantNats": {"ca": {"value": "-----BEGIN CERTIFICATE-----\n..."}, "createNamespace": True},
    "config": {"producer": {"allow_private_targets": True},
               "object_store": {"kind": "s3", "bucket": "vrsky-payloads", "endpoint": "http://minio.vrsky:9000"},
               "security": {"credential_rotation_days": 0.5},
               "http": {"max_connections": 20000},
               "claim_check": {"body_bytes_max": 268435456}},
    "probes": {"readiness": {"grpc": True}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "dashboards": {"enabled": True},
    "networkPolicy": {"enabled": True,
                      "extraEgress": [{"to": [{"podSelector": {"matchLabels": {"app": "postgres"}}}],
                                       "ports": [{"protocol": "TCP", "port": 5432}]}]},
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "vrsky"}}}],
    "container": {"env": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4318",
                          "HOST_IP": {"valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}}},
}

EXISTING = {
    "secrets": {"adminToken": {"existingSecret": "vrsky-admin", "key": "token"},
                "secretsKey": {"existingSecret": "vrsky-seal", "key": "key"},
                "databaseUrl": {"existingSecret": "vrsky-db", "key": "url"}},
    "platformNats": {"creds": {"existingSecret": "vrsky-platform-user", "key": "runtime.creds"},
                     "ca": {"existingSecret": "vrsky-platform-nats-tls", "key": "ca.crt"}},
    "tenantNats": {"ca": {"existingSecret": "vrsky-tenant-nats-ca", "key": "ca.crt"}},
    "serviceMonitor": {"enabled": True},
}

MERGE_PATCH = {
    **MINIMAL,
    "statefulSet": {"merge": {"spec": {"minReadySeconds": 10}},
                    "patch": [{"op": "add", "path": "/spec/template/spec/priorityClassName", "value": "vrsky-high"},
                              {"op": "test", "path": "/spec/podManagementPolicy", "value": "Parallel"}]},
    "podTemplate": {"merge": {"metadata": {"annotations": {"example.com/merged": "yes"}}}},
    "container": {"patch": [{"op": "add", "path": "/env/-", "value": {"name": "PATCHED", "value": "1"}},
                            {"op": "replace", "path": "/livenessProbe/periodSeconds", "value": 20},
                            {"op": "copy", "from": "/resources/requests/memory", "path": "/resources/limits/cpu"},
                            {"op": "remove", "path": "/resources/limits/cpu"}]},
    "service": {"merge": {"spec": {"type": "LoadBalancer"}},
                "patch": [{"op": "remove", "path": "/spec/ports/1"},
                          {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "x"}},
                          {"op": "move", "from": "/metadata/annotations/a~0b~1c", "path": "/metadata/annotations/moved"}]},
    "headlessService": {"patch": [{"op": "add", "path": "/metadata/labels/extra", "value": "1"}]},
    "configMap": {"merge": {"metadata": {"annotations": {"example.com/cm": "merged"}}}},
    "podDisruptionBudget": {"patch": [{"op": "replace", "path": "/spec/maxUnavailable", "value": 2}]},
}

# Needs no required value: no external platform, no kubernetes provisioner.
LOCAL = {
    "replicas": 1,
    "platformNats": {"external": False},
    "config": {"nats": {"provisioner": "local"}, "state": {"replicas": 1}},
}

# Every bound of vrsky/files/config-schema.yaml at its edge, lowest and highest (and the
# rules between keys at theirs): the chart renders them, and the runtime's test loads their
# golden configs, so the chart refuses nothing the runtime accepts at a bound.
# check_schema_limits() fails when a bound of the schema is not here.
LOWER_LIMITS = deep_merge(MINIMAL, {"config": {
    "nats": {"startup_timeout_ms": 1, "go_max_procs": 0, "health_interval_ms": 1, "instances_per_tenant_max": 1},
    "webhook": {"body_bytes_max": 1, "unfinished_per_integration_max": 1, "refusal_delay_ms": 0},
    "http": {"header_read_timeout_ms": 1, "body_read_timeout_ms": 1, "max_connections": 1},
    "security": {"credential_rotation_days": 0},
    # redrive_after_ms / 1000 must stay under message_state_ttl_s: 0 < 1.
    "state": {"message_state_ttl_s": 1, "retry_queue_max_age_s": 1, "dead_letter_max_age_s": 1, "replicas": 1,
              "redrive_after_ms": 1, "redrive_tick_ms": 1, "scheduler_concurrency": 1, "commit_batch_max": 0,
              "commit_in_flight_max": 1},
    # body_bytes_max may equal threshold_bytes.
    "claim_check": {"threshold_bytes": 1, "body_bytes_max": 1, "pipeline_read_bytes_max": 1, "presign_ttl_s": 1,
                    "sweep_interval_s": 1, "orphan_grace_s": 0, "uploads_in_flight_max": 1},
    "cluster": {"lease_ttl_ms": 1000, "forward_wait_ms": 0},
}})
UPPER_LIMITS = deep_merge(MINIMAL, {"config": {
    "nats": {"go_max_procs": 65535, "health_interval_ms": 50000},
    "webhook": {"body_bytes_max": 4194304, "refusal_delay_ms": 1000},
    "security": {"credential_rotation_days": 3650},
    # 899999 ms is 899 s, under the default message_state_ttl_s of 900.
    "state": {"replicas": 5, "redrive_after_ms": 899999, "commit_batch_max": 1000, "commit_in_flight_max": 50},
    "claim_check": {"threshold_bytes": 4194304, "body_bytes_max": 4194304, "presign_ttl_s": 604800,
                    "uploads_in_flight_max": 1024, "public_url": "https://payloads.example.com:8443/vrsky"},
    "cluster": {"lease_ttl_ms": 600000, "forward_wait_ms": 120000},
}})


def vrsky_value_sets() -> list[tuple[str, dict]]:
    return [
        ("minimal required values", MINIMAL),
        ("everything enabled", EVERYTHING),
        ("existing secrets", EXISTING),
        ("merge and patch", MERGE_PATCH),
        ("replicas 1", deep_merge(MINIMAL, {"replicas": 1})),
        ("replicas 5", deep_merge(MINIMAL, {"replicas": 5, "podDisruptionBudget": {"maxUnavailable": 2}})),
        ("local platform and provisioner", LOCAL),
        ("no grpc, no persistence", deep_merge(MINIMAL, {"grpc": {"enabled": False}, "persistence": {"enabled": False}})),
        ("lower limits", LOWER_LIMITS),
        ("upper limits", UPPER_LIMITS),
    ]


# The configuration keys the runtime takes from the environment only (the chart's
# secretKeyRefs): never in vrsky.toml, so never in its golden copies.
SECRET_KEYS = ("admin_token", "security.secrets_key", "database_url")

# ---------------------------------------------------------------------------------------
# The rendered vrsky.toml against its golden copies, vrsky/tests/config-<slug>.toml: the
# runtime's own test loads each with Config::load (unknown keys, ranges, cross-field
# rules), which closes the loop between the chart and the runtime's parser.

CONFIG_GOLDENS = HERE / "vrsky/tests"


def config_slug(label: str) -> str:
    """A value set's label as the kebab-case part of its golden file's name
    ("no grpc, no persistence" -> "no-grpc-no-persistence")."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def update_configs_command() -> str:
    """How to rewrite the golden configs, from the repository root, with this Python."""
    script = Path(__file__).resolve()
    return shlex.join([sys.executable, str(script.relative_to(ROOT) if script.is_relative_to(ROOT) else script),
                       "--update-configs"])


def rendered_config(r: Render) -> str:
    """The vrsky.toml key of the ConfigMap the StatefulSet mounts, exactly as rendered."""
    name = r.one("StatefulSet")["metadata"]["name"]
    return r.one("ConfigMap", name)["data"]["vrsky.toml"]


def config_mismatch(rel: str, label: str, golden: str, rendered: str) -> str:
    """What differs between a golden config and the render: the keys, then a unified diff."""
    lines = []
    try:
        g, n = flat(tomllib.loads(golden)), flat(tomllib.loads(rendered))
    except tomllib.TOMLDecodeError as e:
        lines.append(f"  (one side is not TOML: {e})")
    else:
        for k in sorted(set(g) | set(n)):
            if k not in n:
                lines.append(f"  {k}: only in the golden file ({g[k]!r})")
            elif k not in g:
                lines.append(f"  {k}: only in the render ({n[k]!r})")
            elif g[k] != n[k] or type(g[k]) is not type(n[k]):
                lines.append(f"  {k}: golden {g[k]!r}, rendered {n[k]!r}")
        if not lines:
            lines.append("  same keys and values: only the text differs (comments, order, layout)")
    diff = list(difflib.unified_diff(golden.splitlines(), rendered.splitlines(),
                                     fromfile=f"{rel} (golden)",
                                     tofile=f"vrsky [{label}] ConfigMap vrsky.toml (rendered)", lineterm=""))
    if not diff:  # the same lines: only the final newline differs
        diff = [f"--- {rel} (golden)", f"+++ vrsky [{label}] (rendered)",
                f"  golden ends {golden[-1:]!r}, rendered ends {rendered[-1:]!r} (the final newline)"]
    return (f"the rendered vrsky.toml differs from its golden copy {rel}:\n" + "\n".join(lines) +
            f"\n  if the change is intended, rewrite the golden configs (the runtime's test loads them): "
            f"{update_configs_command()}\n" + "\n".join("    " + d for d in diff))


class ConfigGoldens:
    """Compares (or, with update, rewrites) each value set's config-<slug>.toml."""

    def __init__(self, labels: list[str], update: bool):
        self.update = update
        self.slugs: dict[str, str] = {}
        self.written: list[str] = []
        self.unchanged = 0
        for label in labels:
            s = config_slug(label)
            check(s and s not in self.slugs, f"vrsky [{label}]",
                  f"its golden config's slug {s!r} is already {self.slugs.get(s)!r}'s: give the value set another label")
            self.slugs.setdefault(s, label)

    def path(self, label: str) -> Path:
        return CONFIG_GOLDENS / f"config-{config_slug(label)}.toml"

    def compare(self, label: str, r: Render) -> None:
        where = f"vrsky [{label}]"
        text = rendered_config(r)
        path = self.path(label)
        rel = str(path.relative_to(ROOT))
        present = [k for k in SECRET_KEYS if k in flat(tomllib.loads(text))]
        if not check(not present, where, f"the rendered vrsky.toml holds {present}, which come from the environment "
                     f"(Secrets): refusing to {'write' if self.update else 'compare'} {rel}"):
            return
        old = path.read_text() if path.exists() else None
        if self.update:
            if old == text:
                self.unchanged += 1
                return
            CONFIG_GOLDENS.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                f.write(text)
            self.written.append(rel)
            note(f"{'rewrote' if old is not None else 'wrote'} {rel}")
            return
        if old is None:
            check(False, where, f"{rel}, the golden copy of this value set's rendered vrsky.toml, does not exist: "
                  f"write it with {update_configs_command()}")
        elif old != text:
            check(False, where, config_mismatch(rel, label, old, text))
        else:
            check(True, where, "")

    def finish(self) -> None:
        """Golden configs no value set renders: removed with update, else a failure."""
        wanted = {self.path(label).name for label in self.slugs.values()}
        for p in sorted(CONFIG_GOLDENS.glob("config-*.toml")):
            if p.name in wanted:
                continue
            rel = str(p.relative_to(ROOT))
            if self.update:
                p.unlink()
                note(f"removed {rel} (no value set renders it)")
            else:
                check(False, rel, f"stale: no value set of check.py renders it (the slugs are {', '.join(sorted(self.slugs))}); "
                      f"remove it with {update_configs_command()}")
        if self.update:
            note(f"golden configs: {len(self.written)} written, {self.unchanged} unchanged, in {CONFIG_GOLDENS.relative_to(ROOT)}")
        ignored = [f["name"] for f in load_chart("vrsky").files if f["name"].startswith("tests/")]
        check(not ignored, "deploy/helm/vrsky/.helmignore", f"{ignored} would be packaged into the chart: ignore /tests/")


def check_vrsky(r: Render, values: dict, keys: set[str], env_keys: dict[str, str]) -> None:
    w = r.where
    v = deep_merge(load_chart("vrsky").values, values)
    sts = r.one("StatefulSet")
    if not sts:
        return
    spec = sts["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"]["labels"]
    pod_spec = pod["spec"]
    selector = spec["selector"]["matchLabels"]
    fullname = sts["metadata"]["name"]
    check(spec["replicas"] == v["replicas"], w, f"StatefulSet replicas {spec['replicas']} != value {v['replicas']}")
    check(labels_match(selector, pod_labels), w, f"the StatefulSet's selector {selector} does not match its pod labels")
    # deploy/monitoring/prometheus.yml keeps pods with app.kubernetes.io/name=vrsky and port `http`.
    check(pod_labels.get("app.kubernetes.io/name") == "vrsky", w, "pods must be labelled app.kubernetes.io/name=vrsky (prometheus.yml)")
    check(pod_labels.get("app.kubernetes.io/component") == "runtime", w, "pods must be component runtime (network policies)")
    for k, val in v["global"]["labels"].items():
        for _, o in r.objects:
            check(o["metadata"].get("labels", {}).get(k) == val, w, f"{o['kind']}/{o['metadata']['name']} lacks global label {k}")

    # The governing Service: headless, same selector.
    headless = r.named("Service", spec["serviceName"])
    if check(headless is not None, w, f"serviceName {spec['serviceName']} names no Service of the chart"):
        check(headless["spec"].get("clusterIP") == "None", w, "the StatefulSet's governing Service must be headless")
        check(headless["spec"]["selector"] == selector, w, "the headless Service's selector is not the StatefulSet's")
    services = [s for s in r.all("Service") if s["metadata"]["name"] != spec["serviceName"]]
    check(len(services) == 1, w, f"expected one client Service besides the headless one, found {len(services)}")
    for s in r.all("Service"):
        check(labels_match(s["spec"]["selector"], pod_labels), w, f"Service {s['metadata']['name']} selects no runtime pod")

    c = container(pod_spec, "vrsky")
    if not check(c, w, "no container named vrsky"):
        return
    # The image.
    reg = v["image"]["registry"] or v["global"]["image"]["registry"]
    want_image = f"{reg + '/' if reg else ''}{v['image']['repository']}:{v['image']['tag'] or load_chart('vrsky').metadata['appVersion']}"
    check(c["image"] == want_image, w, f"image {c['image']} != {want_image}")
    if v["global"]["image"]["pullSecretNames"]:
        check([s["name"] for s in pod_spec.get("imagePullSecrets", [])] == v["global"]["image"]["pullSecretNames"],
              w, "imagePullSecrets do not follow global.image.pullSecretNames")

    # The config file: `serve --config <file>`, mounted from the ConfigMap.
    args = c.get("args", [])
    check(args[:2] == ["serve", "--config"] and len(args) == 3, w, f"args {args} are not `serve --config FILE`")
    config_path = args[2] if len(args) == 3 else "/nonexistent"
    source, key = mounted_file(pod_spec, c, config_path)
    cm = r.one("ConfigMap", fullname)
    check(source == f"configMap:{fullname}", w, f"{config_path} is not mounted from ConfigMap {fullname}: {key}")
    toml_text = (cm.get("data") or {}).get(key or "vrsky.toml") or (cm.get("data") or {}).get(os.path.basename(config_path))
    if not check(toml_text, w, f"ConfigMap {fullname} has no {os.path.basename(config_path)}"):
        return
    try:
        cfg = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as e:
        check(False, w, f"vrsky.toml is not TOML: {e}")
        return

    fcfg = flat(cfg)
    for k2, v2 in fcfg.items():
        check(k2 in keys, w, f"vrsky.toml key {k2} is not a configuration key (README.md, Configuration): the runtime refuses unknown keys")
        if isinstance(v2, float):
            check(k2 == "security.credential_rotation_days", w, f"vrsky.toml {k2} = {v2} is a float; the runtime wants an integer")
    for secret_key in SECRET_KEYS:
        check(secret_key not in fcfg, w, f"{secret_key} must come from a Secret, not the ConfigMap")
    for k2, want in (values.get("config") and flat(values["config"]) or {}).items():
        check(fcfg.get(k2) == want, w, f"config.{k2}: vrsky.toml has {fcfg.get(k2)!r}, the values {want!r}")
    http_port = port_number(c, "http")
    check(http_port == v["ports"]["http"], w, f"container port http {http_port} != ports.http")
    check(fcfg.get("http_addr") == f"0.0.0.0:{http_port}", w, f"http_addr {fcfg.get('http_addr')} is not the http port on all addresses")
    if v["grpc"]["enabled"]:
        grpc_port = port_number(c, "grpc")
        check(fcfg.get("grpc_addr") == f"0.0.0.0:{grpc_port}", w, f"grpc_addr {fcfg.get('grpc_addr')} != the grpc port {grpc_port}")
    else:
        check("grpc_addr" not in fcfg and port_number(c, "grpc") is None, w, "grpc.enabled=false still serves a gateway")
    data_dir = fcfg.get("data_dir")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    check(data_dir in mounts, w, f"data_dir {data_dir} is not a volume mount (the root filesystem is read-only)")
    if v["persistence"]["enabled"]:
        claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
        check(data_dir in mounts and mounts[data_dir]["name"] in claims, w, "data_dir is not on the volumeClaimTemplate")
    for file_key in ("nats.platform_creds", "nats.platform_ca", "nats.kubernetes.ca_file"):
        if file_key in fcfg:
            src, k3 = mounted_file(pod_spec, c, fcfg[file_key])
            check(src, w, f"{file_key} {fcfg[file_key]} is not a mounted file: {k3}")
    external = v["platformNats"]["external"]
    check(("nats.platform_url" in fcfg) == external, w, "nats.platform_url must be set exactly with platformNats.external")
    kubernetes = fcfg.get("nats.provisioner") == "kubernetes"
    if external and not values.get("platformNats", {}).get("url"):
        # The nats-platform chart's client Service, as that chart names it in this namespace.
        check(fcfg["nats.platform_url"] == f"nats://{PLATFORM_RELEASE}.{VRSKY_NS}.svc.cluster.local:4222", w,
              f"the default platform URL {fcfg['nats.platform_url']} is not the nats-platform chart's Service")
    if values is MINIMAL:
        check(fcfg.get("state.replicas") == 3, w, "the default state.replicas must be 3 (R3 on the 3-node platform)")

    # The environment: node identity and secrets.
    env = env_of(c)
    node = env.get("VRSKY_NODE_ID", {})
    check(node.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", w,
          "VRSKY_NODE_ID must come from the pod's metadata.name (downward API)")
    for name, e in env.items():
        if name.startswith("VRSKY_"):
            k2 = env_keys.get(name) or name[len("VRSKY_"):].lower().replace("__", ".")
            check(k2 in keys, w, f"env {name} names no configuration key ({k2}; README.md, Configuration)")
            if "value" in e and k2 in SECRET_KEYS:
                check(False, w, f"{name} is a secret and must come from a secretKeyRef")
            check(k2 not in fcfg, w, f"{k2} is both in vrsky.toml and the environment ({name} wins)")
    # cluster.advertise_url: this pod's name under the headless Service, on the http port.
    adv = env.get("VRSKY_CLUSTER__ADVERTISE_URL", {}).get("value")
    want_adv = f"http://$(VRSKY_NODE_ID).{spec['serviceName']}.{VRSKY_NS}.svc.cluster.local:{http_port}"
    check(adv == want_adv, w, f"VRSKY_CLUSTER__ADVERTISE_URL {adv!r} is not {want_adv!r}")
    check(list(env).index("VRSKY_NODE_ID") < list(env).index("VRSKY_CLUSTER__ADVERTISE_URL") if adv else True, w,
          "VRSKY_NODE_ID must come before the variable that expands it")
    secrets_by_name = {s["metadata"]["name"]: s for s in r.all("Secret")}
    for name in ("VRSKY_ADMIN_TOKEN", "VRSKY_SECURITY__SECRETS_KEY", "VRSKY_DATABASE_URL"):
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] in secrets_by_name:
            check(ref["key"] in secrets_by_name[ref["name"]].get("data", {}), w, f"{name}: Secret {ref['name']} has no key {ref['key']}")
    for item, envname in (("adminToken", "VRSKY_ADMIN_TOKEN"), ("secretsKey", "VRSKY_SECURITY__SECRETS_KEY"),
                          ("databaseUrl", "VRSKY_DATABASE_URL")):
        want = v["secrets"][item]
        ref = env.get(envname, {}).get("valueFrom", {}).get("secretKeyRef")
        if want.get("existingSecret"):
            check(ref == {"name": want["existingSecret"], "key": want["key"]}, w, f"{envname} does not use existingSecret {want['existingSecret']}/{want['key']}: {ref}")
        elif want.get("value") or want.get("generate"):
            check(ref and ref["name"] == fullname, w, f"{envname} is not taken from the chart's Secret: {ref}")
    if values is EXISTING:
        check(fullname not in secrets_by_name, w, "with every secret existing, the chart must make no Secret of its own")
    if "secretsKey" in (values.get("secrets") or {}) and values["secrets"]["secretsKey"].get("value"):
        raw = base64.b64decode(secrets_by_name[fullname]["data"]["secrets-key"]).decode()
        check(raw == values["secrets"]["secretsKey"]["value"], w, "the secrets key in the Secret is not the value given")
    if values is MINIMAL:
        key64 = base64.b64decode(secrets_by_name[fullname]["data"]["secrets-key"])
        check(len(base64.b64decode(key64)) == 32, w, "the generated secrets key is not base64 of 32 bytes")
        check(len(base64.b64decode(secrets_by_name[fullname]["data"]["admin-token"])) >= 16, w, "the generated admin token is under 16 characters")
        check(secrets_by_name[fullname]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep", w,
              "a Secret holding a generated secrets key must be kept on uninstall")

    # Probes.
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe) or {}
        if probe == "readinessProbe" and v["probes"]["readiness"]["grpc"]:
            check(p.get("grpc", {}).get("port") == port_number(c, "grpc") and p["grpc"].get("service", "") == "",
                  w, f"readinessProbe.grpc {p.get('grpc')} is not the gateway's health service")
            continue
        get = p.get("httpGet") or {}
        check(get.get("path") == path, w, f"{probe} must GET {path}, has {get.get('path')}")
        check(port_number(c, get.get("port")) == http_port, w, f"{probe} port {get.get('port')} is not the http port")

    # Non-root, read-only root.
    psc = pod_spec.get("securityContext", {})
    csc = c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, w, "the pod must run as non-root")
    check(csc.get("readOnlyRootFilesystem") is True, w, "the container's root filesystem must be read-only")
    check(csc.get("allowPrivilegeEscalation") is False, w, "allowPrivilegeEscalation must be false")
    check("ALL" in csc.get("capabilities", {}).get("drop", []), w, "capabilities must drop ALL")

    # The checksum annotation is the rendered ConfigMap's.
    ann = pod["metadata"].get("annotations", {})
    check(ann.get("checksum/config") == sha256(r.manifests["vrsky/templates/configmap.yaml"]), w,
          "checksum/config is not the sha256 of the rendered ConfigMap")

    # Anti-affinity by default.
    if not v["affinity"]:
        terms = pod_spec.get("affinity", {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
        check(any(t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname" and
                  labels_match(t["podAffinityTerm"]["labelSelector"]["matchLabels"], pod_labels) for t in terms),
              w, "the default affinity must be a soft anti-affinity on kubernetes.io/hostname over the runtime's pods")

    # The PDB.
    if v["podDisruptionBudget"]["enabled"]:
        pdb = r.one("PodDisruptionBudget")
        check(pdb and labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels), w, "the PDB selects no runtime pod")

    # Service account, RBAC: the provisioner's calls, in vrsky-tenants only, no wildcard.
    check(pod_spec.get("automountServiceAccountToken") is kubernetes, w,
          f"automountServiceAccountToken must be {kubernetes} (only the kubernetes provisioner uses the API)")
    check(not r.all("ClusterRole") and not r.all("ClusterRoleBinding"), w, "nothing cluster-wide")
    roles = r.all("Role")
    if kubernetes:
        if check(len(roles) == 1, w, f"expected one Role, found {len(roles)}"):
            check_role(w, roles[0])
        bindings = r.all("RoleBinding")
        if check(len(bindings) == 1, w, f"expected one RoleBinding, found {len(bindings)}") and roles:
            b = bindings[0]
            check(b["metadata"]["namespace"] == TENANTS_NS, w, "the RoleBinding must be in vrsky-tenants")
            check(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[0]["metadata"]["name"]},
                  w, f"roleRef {b['roleRef']} is not the Role")
            check(b["subjects"] == [{"kind": "ServiceAccount", "name": pod_spec["serviceAccountName"], "namespace": VRSKY_NS}],
                  w, f"the RoleBinding's subject {b['subjects']} is not the pods' ServiceAccount")
        sa = r.named("ServiceAccount", pod_spec["serviceAccountName"])
        check(sa is not None, w, f"ServiceAccount {pod_spec['serviceAccountName']} is not made by the chart")
    else:
        check(not roles and not r.all("RoleBinding"), w, "no RBAC without the kubernetes provisioner")

    # ServiceMonitor: the client Service's http port, the admin token, honorLabels, job vrsky-runtime.
    for sm in r.all("ServiceMonitor"):
        s = sm["spec"]
        svc = [x for x in services if labels_match(s["selector"]["matchLabels"], x["metadata"]["labels"])]
        check(len(svc) == 1 and not labels_match(s["selector"]["matchLabels"], headless["metadata"]["labels"]), w,
              "the ServiceMonitor must select the client Service only (each pod scraped once)")
        ep = s["endpoints"][0]
        check(svc and ep["port"] in [p["name"] for p in svc[0]["spec"]["ports"]], w, f"ServiceMonitor port {ep['port']} is not a port of the Service")
        check(ep.get("path") == "/metrics" and ep.get("honorLabels") is True, w, "ServiceMonitor: /metrics with honorLabels")
        creds = ep.get("authorization", {}).get("credentials", {})
        token_ref = env.get("VRSKY_ADMIN_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        check(ep.get("authorization", {}).get("type") == "Bearer" and creds == token_ref, w,
              f"ServiceMonitor must send the admin token ({token_ref}) as a Bearer token, has {creds}")
        check({"action": "replace", "targetLabel": "job", "replacement": "vrsky-runtime"} in ep.get("relabelings", []),
              w, "ServiceMonitor must set job=vrsky-runtime (alerts.yml, the dashboards)")
        check(s["namespaceSelector"]["matchNames"] == [VRSKY_NS], w, "ServiceMonitor namespaceSelector")

    # Dashboards: the four, identical to deploy/monitoring/dashboards.
    dash = [cmx for cmx in r.all("ConfigMap") if cmx["metadata"]["name"] != fullname]
    if v["dashboards"]["enabled"]:
        source_dir = ROOT / "deploy/monitoring/dashboards"
        want = {p.name: p.read_text() for p in source_dir.glob("*.json")}
        got = {}
        for d in dash:
            check(d["metadata"]["labels"].get("grafana_dashboard") == "1", w, f"{d['metadata']['name']} lacks grafana_dashboard: \"1\"")
            got.update(d["data"])
        check(got == want, w, f"the dashboards' ConfigMaps {sorted(got)} differ from deploy/monitoring/dashboards {sorted(want)}")
    else:
        check(not dash, w, "dashboards are off by default")

    # NetworkPolicies.
    policies = r.all("NetworkPolicy")
    if v["networkPolicy"]["enabled"]:
        check_vrsky_network_policies(w, policies, pod_labels, kubernetes, v)
    else:
        check(not policies, w, "network policies are off by default")

    # The test hook.
    tests = [o for o in r.all("Pod") if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    if v["tests"]["enabled"]:
        if check(len(tests) == 1, w, f"expected one helm test Pod, found {len(tests)}"):
            t = tests[0]
            check(not labels_match(selector, t["metadata"]["labels"]), w, "the test Pod must not carry the runtime's selector labels")
            tc = t["spec"]["containers"][0]
            tenv = env_of(tc)
            want_url = f"http://{services[0]['metadata']['name']}.{VRSKY_NS}.svc.cluster.local:{http_port}" if services else ""
            check(tenv.get("VRSKY_URL", {}).get("value") == want_url, w, f"the test's VRSKY_URL is not the client Service's http port ({want_url})")
            check(tenv.get("VRSKY_ADMIN_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef") ==
                  env.get("VRSKY_ADMIN_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef"), w, "the test must use the node's admin token")
            script = (HERE / "vrsky/files/webhook-e2e.py").read_text()
            check(tc.get("command") == ["python3", "-c"] and tc.get("args") == [script], w, "the test Pod does not run files/webhook-e2e.py")
            allow = str(fcfg.get("producer.allow_private_targets", False)).lower()
            check(tenv.get("ALLOW_PRIVATE_TARGETS", {}).get("value") == allow, w, "the test's ALLOW_PRIVATE_TARGETS does not follow the config")
            check(t["spec"]["securityContext"].get("runAsNonRoot") is True, w, "the test Pod must run as non-root")
    else:
        check(not tests, w, "tests.enabled=false still makes a test Pod")

    # What keeps the runtime from starting fails the render: the NOTES of one that rendered
    # have nothing to report as an error.
    check("ERROR" not in r.notes, w, "NOTES report an ERROR: a configuration the runtime refuses must fail the render instead")


def check_role(w: str, role: dict) -> None:
    check(role["metadata"]["namespace"] == TENANTS_NS, w, f"the Role must be in {TENANTS_NS}")
    granted: set[tuple[str, str, str]] = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            check("*" not in rule.get(field, []), w, f"the Role grants * in {field}")
        check(not rule.get("resourceNames") and not rule.get("nonResourceURLs"), w, "unexpected resourceNames/nonResourceURLs")
        for g in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((g, res, verb))
    # What runtime/src/k8s.rs calls, as RBAC.
    needed: set[tuple[str, str, str]] = set()
    for kind, methods in provisioner_api_calls().items():
        group, resource = KIND_RESOURCE.get(kind, ("?", kind.lower() + "s"))
        for m in methods:
            for verb in KUBE_VERBS.get(m, {f"?{m}"}):
                needed.add((group, resource, verb))
    check(needed, "runtime/src/k8s.rs", "found no kube API calls: has the provisioner moved?")
    src = (ROOT / "runtime/src/k8s.rs").read_text()
    if "block_owner_deletion: Some(true)" in src:
        # OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs update on the owner's finalizers.
        needed.add(("apps", "deployments/finalizers", "update"))
    check(granted == needed, w, f"the Role grants {sorted(granted - needed) or 'nothing more'} beyond, and lacks "
          f"{sorted(needed - granted) or 'nothing'} of, what runtime/src/k8s.rs does ({sorted(needed)})")


def check_vrsky_network_policies(w: str, policies: list[dict], pod_labels: dict, kubernetes: bool, v: dict) -> None:
    by_ns = {}
    for p in policies:
        by_ns.setdefault(p["metadata"]["namespace"], []).append(p)
    egress = [p for p in by_ns.get(VRSKY_NS, []) if "Egress" in p["spec"]["policyTypes"]]
    if check(len(egress) == 1, w, f"expected one egress policy for the runtime, found {len(egress)}"):
        e = egress[0]["spec"]
        check(labels_match(e["podSelector"]["matchLabels"], pod_labels), w, "the egress policy selects no runtime pod")
        check(e["policyTypes"] == ["Egress"], w, "the runtime's policy is egress only")
        for rule in e["egress"]:
            check(rule.get("to"), w, f"an egress rule without 'to' allows everything: {rule}")
            for peer in rule.get("to", []):
                block = peer.get("ipBlock")
                if block and block["cidr"] in ("0.0.0.0/0", "::/0"):
                    must = PRIVATE_V4 if block["cidr"] == "0.0.0.0/0" else PRIVATE_V6
                    check(must <= set(block.get("except", [])), w, f"the internet rule lets private ranges through: {block}")
        check(any(labels_match(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels) and "namespaceSelector" not in peer
                  and [p["port"] for p in rule["ports"]] == [v["ports"]["http"]]
                  for rule in e["egress"] for peer in rule["to"]), w,
              "the runtime's egress must reach the other nodes' http port (forwarding)")
        targets = json.dumps(e["egress"])
        for want in ('"k8s-app": "kube-dns"', '"app.kubernetes.io/component": "platform-nats"'):
            check(want in targets, w, f"the runtime's egress lacks {want}")
        if kubernetes:
            check('"app.kubernetes.io/component": "tenant-nats"' in targets, w, "the runtime's egress lacks tenant NATS")
            for cidr in v["networkPolicy"]["apiServer"]["cidrs"]:
                check(f'"cidr": "{cidr}"' in targets, w, f"the runtime's egress lacks the API server {cidr}")
    tenant = by_ns.get(TENANTS_NS, [])
    if kubernetes and check(len(tenant) == 1, w, f"expected one policy in {TENANTS_NS}, found {len(tenant)}"):
        t = tenant[0]["spec"]
        check(t["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "tenant-nats"}, w, "the tenant policy must select tenant-nats pods")
        check(set(t["policyTypes"]) == {"Ingress", "Egress"}, w, "tenant NATS: ingress and egress")
        sources = []
        for rule in t["ingress"]:
            for peer in rule["from"]:
                ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                sel = peer.get("podSelector", {}).get("matchLabels")
                sources.append((ns, bool(sel and labels_match(sel, pod_labels)), tuple(p["port"] for p in rule["ports"])))
        check(sources == [(VRSKY_NS, True, (4222, 8222)), (v["networkPolicy"]["monitoringNamespace"], False, (7777,))], w,
              f"tenant NATS must take traffic from the runtime (4222, 8222) and Prometheus (7777) only, has {sources}")
        check(all(p.get("to") for p in t["egress"]), w, "tenant NATS egress: DNS only")


def check_merge_patch_effects(r: Render) -> None:
    w = r.where
    sts = r.one("StatefulSet")
    if not sts:
        return
    spec = sts["spec"]
    pod_spec = spec["template"]["spec"]
    c = container(pod_spec, "vrsky")
    check(spec.get("minReadySeconds") == 10, w, "statefulSet.merge was not applied")
    check(pod_spec.get("priorityClassName") == "vrsky-high", w, "statefulSet.patch (add) was not applied")
    check(spec["template"]["metadata"]["annotations"].get("example.com/merged") == "yes", w, "podTemplate.merge was not applied")
    check("checksum/config" in spec["template"]["metadata"]["annotations"], w, "podTemplate.merge lost the checksum annotation")
    check(env_of(c).get("PATCHED", {}).get("value") == "1", w, "container.patch (add /env/-) was not applied")
    check(c["livenessProbe"]["periodSeconds"] == 20, w, "container.patch (replace) was not applied")
    check("cpu" not in c["resources"]["limits"], w, "container.patch (copy, then remove) was not applied")
    svc = r.one("Service", sts["metadata"]["name"])
    check(svc and svc["spec"]["type"] == "LoadBalancer", w, "service.merge was not applied")
    check(svc and [p["name"] for p in svc["spec"]["ports"]] == ["http"], w, "service.patch (remove /spec/ports/1) was not applied")
    check(svc and svc["metadata"].get("annotations") == {"moved": "x"}, w, "service.patch (add, move with ~0 ~1 escapes) was not applied")
    headless = r.one("Service", spec["serviceName"])
    check(headless and headless["metadata"]["labels"].get("extra") == "1", w, "headlessService.patch was not applied")
    cm = r.one("ConfigMap", sts["metadata"]["name"])
    check(cm and cm["metadata"].get("annotations", {}).get("example.com/cm") == "merged", w, "configMap.merge was not applied")
    check(r.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 2, w, "podDisruptionBudget.patch was not applied")


def nested(dotted: str, value: Any) -> dict:
    """{"a.b.c": v} as {"a": {"b": {"c": v}}}."""
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


@functools.lru_cache(maxsize=None)
def config_schema() -> dict[str, dict]:
    """vrsky/files/config-schema.yaml: every runtime key with its type and range."""
    return yaml.safe_load((HERE / "vrsky/files/config-schema.yaml").read_text())


def schema_range(spec: dict) -> str:
    """A bound as _validate.tpl words it: "1 to 5", "at least 1", "at most 1000"."""
    if "min" in spec and "max" in spec:
        return f"{spec['min']} to {spec['max']}"
    return f"at least {spec['min']}" if "min" in spec else f"at most {spec['max']}"


def check_schema(keys: set[str]) -> None:
    """The chart's schema against README.md's Configuration table (every key, the defaults
    the rules between keys use) and against the limit value sets (every bound exercised)."""
    w = "deploy/helm/vrsky/files/config-schema.yaml"
    schema = config_schema()
    check(set(schema) == keys, w, f"its keys are not README.md's Configuration table's: only in the schema "
          f"{sorted(set(schema) - keys)}, only in the table {sorted(keys - set(schema))}")
    defaults = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"^\| `([a-z0-9_.]+)` \|[^|]*\|([^|]*)\|", line)
        if m:
            defaults[m.group(1)] = m.group(2).strip()
    for key, spec in schema.items():
        check(spec.get("type") in ("uint", "number", "bool", "string", "enum"), w, f"{key}: unknown type {spec.get('type')!r}")
        check(set(spec) <= {"type", "min", "max", "why", "pattern", "expect", "default", "of"}, w, f"{key}: unknown fields {set(spec)}")
        if "pattern" in spec:
            check(spec.get("expect"), w, f"{key}: a pattern needs `expect` (what the message says it wants)")
        if "default" in spec:
            check(defaults.get(key, "").startswith(f"`{spec['default']}`"), w,
                  f"{key}: default {spec['default']!r}, README.md's table says {defaults.get(key)!r}")
        lower, upper = flat(LOWER_LIMITS["config"]), flat(UPPER_LIMITS["config"])
        if "min" in spec:
            check(lower.get(key) == spec["min"], w, f"{key}: the \"lower limits\" value set must set it to its min {spec['min']} "
                  f"(has {lower.get(key)!r}), so the runtime's test loads the bound")
        if "max" in spec:
            check(upper.get(key) == spec["max"], w, f"{key}: the \"upper limits\" value set must set it to its max {spec['max']} "
                  f"(has {upper.get(key)!r}), so the runtime's test loads the bound")


def renders(label: str, values: dict) -> None:
    """The render must succeed."""
    try:
        load_chart("vrsky").render(values, name=VRSKY_RELEASE, namespace=VRSKY_NS, is_install=True)
    except helm.HelmError as e:
        check(False, f"vrsky [{label}]", f"the render should succeed but failed: {e}")
    else:
        check(True, f"vrsky [{label}]", "")


def vrsky_negative() -> None:
    def fails(label: str, values: dict, expect: str) -> None:
        """Fails from MINIMAL plus values: the values alone are at fault."""
        render_fails("vrsky", label, deep_merge(MINIMAL, values), expect, VRSKY_RELEASE, VRSKY_NS)

    def fails_raw(label: str, values: dict, expect: str) -> None:
        render_fails("vrsky", label, values, expect, VRSKY_RELEASE, VRSKY_NS)

    # The required values: without each, the render fails and names it.
    creds, ca = {"platformNats": MINIMAL["platformNats"]}, {"tenantNats": MINIMAL["tenantNats"]}
    fails_raw("the chart's defaults", {}, REQUIRED["platformNats.creds"])
    fails_raw("no platformNats.creds", ca, REQUIRED["platformNats.creds"])
    fails_raw("platformNats.creds with an empty value", deep_merge(ca, {"platformNats": {"creds": {"value": ""}}}),
              REQUIRED["platformNats.creds"])
    fails_raw("no tenantNats.ca", creds, REQUIRED["tenantNats.ca"])
    fails_raw("no tenantNats.ca, spawned platform", {"platformNats": {"external": False}, "config": {"state": {"replicas": 1}}},
              REQUIRED["tenantNats.ca"])
    fails_raw("no tenantNats.ca, another tls_secret",
              deep_merge(creds, {"config": {"nats": {"kubernetes": {"tls_secret": "tenant-certs"}}}}),
              "(Secret tenant-certs in vrsky-tenants), nats.kubernetes.ca_file")
    # ... and each is required only where the runtime needs it.
    renders("the local provisioner needs no tenantNats.ca", deep_merge(creds, {"config": {"nats": {"provisioner": "local"}}}))
    renders("a spawned platform needs no platformNats.creds",
            deep_merge(ca, {"platformNats": {"external": False}, "config": {"state": {"replicas": 1}}}))
    renders("values instead of existing Secrets", {"platformNats": {"creds": {"value": "creds"}}, "tenantNats": {"ca": {"value": "pem"}}})
    fails("no admin token at all", {"secrets": {"adminToken": {"generate": False}}, "tests": {"enabled": False}},
          "secrets.adminToken.value (or secrets.adminToken.existingSecret, or secrets.adminToken.generate: true) is required")
    fails("a short admin token", {"secrets": {"adminToken": {"value": "fifteen-chars!!"}}},
          "secrets.adminToken.value must be at least 16 characters (admin_token), it has 15")
    renders("a 16-character admin token", deep_merge(MINIMAL, {"secrets": {"adminToken": {"value": "sixteen-chars!!!"}}}))

    # The Secrets' values the chart holds.
    fails("a secrets key of 31 bytes", {"secrets": {"secretsKey": {"value": base64.b64encode(b"k" * 31).decode()}}},
          "secrets.secretsKey.value must be the base64 of 32 random bytes")
    fails("a secrets key not base64", {"secrets": {"secretsKey": {"value": "not base64 at all, but 44 characters long.."}}},
          "secrets.secretsKey.value must be the base64 of 32 random bytes")
    renders("a secrets key with a newline", deep_merge(MINIMAL, {"secrets": {"secretsKey": {"value": base64.b64encode(b"k" * 32).decode() + "\n"}}}))
    fails("a database URL of another database", {"secrets": {"databaseUrl": {"value": "mysql://vrsky@db/vrsky"}}},
          "secrets.databaseUrl.value must start with postgres://, postgresql:// or sqlite:")

    # The pods' names (cluster.node_id) and ports.
    fails("a release name with a dot", {"fullnameOverride": "vrsky.prod"},
          "the pods' names, vrsky.prod-N, are the runtime's cluster.node_id (VRSKY_NODE_ID)")
    fails("ports.http out of range", {"ports": {"http": 65536}}, "ports.http must be a port number, 1 to 65535, got 65536")
    fails("ports.grpc 0", {"ports": {"grpc": 0}}, "ports.grpc must be a port number, 1 to 65535, got 0")
    fails("one port for both", {"ports": {"grpc": 8080}}, "ports.grpc must differ from ports.http")
    renders("one port without the gateway", deep_merge(MINIMAL, {"ports": {"grpc": 8080}, "grpc": {"enabled": False}}))

    # vrsky.toml against the schema: each bound, just outside it.
    for key, spec in config_schema().items():
        if "min" in spec and spec["min"] > 0:
            bad = spec["min"] - 1
            fails(f"config.{key} = {bad}", {"config": nested(key, bad)}, f"config.{key} must be {schema_range(spec)}, got {bad}")
        if "max" in spec:
            bad = spec["max"] + 1
            fails(f"config.{key} = {bad}", {"config": nested(key, bad)}, f"config.{key} must be {schema_range(spec)}, got {bad}")
    fails("a negative rotation", {"config": {"security": {"credential_rotation_days": -0.5}}},
          "config.security.credential_rotation_days must be 0 to 3650, got -0.5 (0 is never)")
    # Types, unknown keys, tables.
    fails("an unknown key", {"config": {"nats": {"provisioner_kind": "kubernetes"}}},
          "config.nats.provisioner_kind is not a configuration key of the runtime (README.md, Configuration), which refuses unknown keys")
    fails("an unknown table", {"config": {"metrics": {"enabled": True}}}, "config.metrics is not a configuration key of the runtime")
    fails("a value for a table", {"config": {"webhook": 5}}, "config.webhook must be a table (of the runtime's webhook.* keys), got 5")
    # (config.cluster: a table the chart's own helpers read before the schema's check.)
    fails("a value for config.cluster", {"config": {"cluster": "big"}},
          'config.cluster must be a table (of the runtime\'s cluster.* keys), got "big"')
    fails("a table for a value", {"config": {"log": {"filter": {"level": "debug"}}}}, "config.log.filter must be a string, not a table")
    fails("a fraction for a whole number", {"config": {"http": {"max_connections": 1.5}}},
          "config.http.max_connections must be a whole number (0 or more), got 1.5")
    fails("a negative whole number", {"config": {"cluster": {"forward_wait_ms": -1}}},
          "config.cluster.forward_wait_ms must be a whole number (0 or more), got -1")
    fails("a duration string for milliseconds", {"config": {"cluster": {"lease_ttl_ms": "10s"}}},
          'config.cluster.lease_ttl_ms must be a whole number (0 or more), got "10s"')
    fails("a string for a bool", {"config": {"producer": {"allow_private_targets": "yes"}}},
          'config.producer.allow_private_targets must be true or false, got "yes"')
    fails("a number for a string", {"config": {"log": {"filter": 5}}}, "config.log.filter must be a string, got 5")
    fails("a list for a string", {"config": {"log": {"filter": ["info"]}}}, 'config.log.filter must be a string, got ["info"]')
    fails("an unknown provisioner", {"config": {"nats": {"provisioner": "docker"}}},
          'config.nats.provisioner must be one of local, kubernetes, got "docker"')
    fails("an unknown log format", {"config": {"log": {"format": "logfmt"}}}, 'config.log.format must be one of text, json, got "logfmt"')
    fails("an unknown object store", {"config": {"object_store": {"kind": "gcs"}}},
          'config.object_store.kind must be one of none, fs, s3, got "gcs"')
    fails("a sync interval in hours", {"config": {"state": {"platform_sync_interval": "1h"}}},
          'config.state.platform_sync_interval must be `always` or a duration such as 500ms, 1s or 2m, got "1h"')
    fails("a sync interval of 0s", {"config": {"state": {"platform_sync_interval": "0s"}}},
          'config.state.platform_sync_interval must be `always` or a duration such as 500ms, 1s or 2m, got "0s"')
    fails("a public URL not http", {"config": {"claim_check": {"public_url": "s3://payloads"}}},
          'config.claim_check.public_url must be an http(s) URL, got "s3://payloads"')
    fails("a public URL without a host", {"config": {"claim_check": {"public_url": "http://"}}},
          'config.claim_check.public_url must be an http(s) URL, got "http://"')
    renders("public URLs the runtime takes", deep_merge(MINIMAL, {"config": {"claim_check": {"public_url": "HTTP://[fd00::1]:8080/p?q=1"}}}))
    # The rules between keys.
    fails("a body limit under the threshold", {"config": {"claim_check": {"body_bytes_max": 262143}}},
          "config.claim_check.body_bytes_max must be at least config.claim_check.threshold_bytes (262144), got 262143")
    fails("a re-drive as long as the state TTL", {"config": {"state": {"redrive_after_ms": 900000}}},
          "config.state.redrive_after_ms must be shorter than config.state.message_state_ttl_s (900 s), got 900000 ms")
    fails("a state TTL shorter than the re-drive", {"config": {"state": {"message_state_ttl_s": 30}}},
          "config.state.redrive_after_ms must be shorter than config.state.message_state_ttl_s (30 s), got 30000 ms")
    fails("s3 without a bucket", {"config": {"object_store": {"kind": "s3", "endpoint": "http://minio:9000"}}},
          "config.object_store.bucket is required with config.object_store.kind = s3")
    fails("s3 with an empty bucket", {"config": {"object_store": {"kind": "s3", "bucket": ""}}},
          "config.object_store.bucket is required with config.object_store.kind = s3")
    for image in ("nats:2.9.10-alpine", "nats:latest", "nats", "nats:alpine"):
        fails(f"tenant image {image}", {"config": {"nats": {"kubernetes": {"image": image}}}},
              f'config.nats.kubernetes.image must be tagged with nats-server 2.10 or newer (as nats:2.10-alpine) for the kubernetes provisioner, got "{image}"')
    for image in ("registry.example.com:5000/nats:2.12.1", "nats:v2.10", "nats:3.0-alpine"):
        renders(f"tenant image {image}", deep_merge(MINIMAL, {"config": {"nats": {"kubernetes": {"image": image}}}}))
    renders("an old tenant image with the local provisioner",
            deep_merge(MINIMAL, {"config": {"nats": {"provisioner": "local", "kubernetes": {"image": "nats:2.9"}}}}))

    fails("config.http_addr set", {"config": {"http_addr": "0.0.0.0:9"}}, "use ports.http instead")
    fails("config.cluster.node_id set", {"config": {"cluster": {"node_id": "a"}}}, "each pod's name")
    fails("config.cluster.advertise_url set", {"config": {"cluster": {"advertise_url": "http://x"}}}, "headless Service")
    fails("secrets_key in the ConfigMap", {"config": {"security": {"secrets_key": "x"}}}, "use secrets.secretsKey")
    fails("platform_creds in config", {"config": {"nats": {"platform_creds": "/x"}}}, "use platformNats")
    fails("grpc probe without gateway", {"grpc": {"enabled": False}, "probes": {"readiness": {"grpc": True}}}, "needs grpc.enabled")
    fails("spawned platform with R3", {"platformNats": {"external": False}}, "set config.state.replicas to 1")
    fails("a patch that does not apply", {"statefulSet": {"patch": [{"op": "replace", "path": "/spec/nope", "value": 1}]}},
          'statefulSet.patch[0]: no member "nope"')
    fails("a failing patch test", {"service": {"patch": [{"op": "test", "path": "/spec/type", "value": "NodePort"}]}},
          "service.patch[0]: test of /spec/type failed")
    fails("a bad patch op", {"configMap": {"patch": [{"op": "upsert", "path": "/x"}]}}, "op must be add, remove")
    fails("a list index past the end", {"container": {"patch": [{"op": "add", "path": "/ports/5", "value": {}}]}},
          "past the list's end")
    fails("a list of maps in vrsky.toml", {"config": {"log": {"format": [{"a": 1}]}}},
          'config.log.format must be one of text, json, got [{"a":1}]')


def checksum_follows_config() -> None:
    a = render("vrsky", "checksum base", MINIMAL, VRSKY_RELEASE, VRSKY_NS)
    b = render("vrsky", "checksum changed", deep_merge(MINIMAL, {"config": {"log": {"filter": "debug"}}}), VRSKY_RELEASE, VRSKY_NS)
    c = render("vrsky", "checksum unrelated", deep_merge(MINIMAL, {"resources": {"requests": {"cpu": "2"}}}), VRSKY_RELEASE, VRSKY_NS)

    def checksum(r: Render) -> str:
        return r.one("StatefulSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    check(checksum(a) != checksum(b), "vrsky [checksum]", "a config change does not change checksum/config (the pods would not roll)")
    check(checksum(a) == checksum(c), "vrsky [checksum]", "checksum/config changes with a value that is not configuration")


def dashboards_identical() -> None:
    src = ROOT / "deploy/monitoring/dashboards"
    dst = HERE / "vrsky/dashboards"
    want = sorted(p.name for p in src.glob("*.json"))
    got = sorted(p.name for p in dst.glob("*.json"))
    check(want == got and len(want) == 4, "deploy/helm/vrsky/dashboards",
          f"the chart's dashboards {got} are not deploy/monitoring/dashboards' {want}")
    for name in set(want) & set(got):
        check((src / name).read_bytes() == (dst / name).read_bytes(), f"deploy/helm/vrsky/dashboards/{name}",
              f"differs from deploy/monitoring/dashboards/{name}: cp deploy/monitoring/dashboards/*.json deploy/helm/vrsky/dashboards/")


def helpers_identical() -> None:
    """The merge/patch helpers are one implementation, copied into each chart."""
    def block(path: Path, prefix: str) -> str:
        text = path.read_text()
        a = text.find("{{/* ---- merge/patch escape hatches")
        b = text.find("{{/* ---- end of merge/patch ---- */}}")
        if a < 0 or b < 0:
            return ""
        return text[a:b].replace(f'"{prefix}.', '"X.').replace(f"{prefix}.merge:", "X.merge:") \
            .replace(f"{prefix}.patch:", "X.patch:").replace(f"{prefix}.object:", "X.object:")

    a = block(HERE / "vrsky/templates/_helpers.tpl", "vrsky")
    b = block(HERE / "nats-platform/templates/_helpers.tpl", "nats-platform")
    check(a and a == b, "deploy/helm/*/templates/_helpers.tpl",
          "the merge/patch helpers of vrsky and nats-platform differ (keep one implementation, renamed)")


# ---------------------------------------------------------------------------------------
# The test hook's script against a fake node


class FakeNode(http.server.BaseHTTPRequestHandler):
    """Just enough of the REST API for files/webhook-e2e.py: it delivers each webhook to
    the integration's producer URL and then reports the message `completed` (or, with
    .outcome = "dead_letter", dead-letters it)."""

    token = "fake-admin-token-0123456789"
    outcome = "completed"
    state: dict = {}

    def log_message(self, *args):
        pass

    def answer(self, status: int, body: Any = None) -> None:
        raw = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def authed(self) -> bool:
        if self.headers.get("authorization") != f"Bearer {self.token}":
            self.answer(401, {"error": {"code": "unauthorized", "message": "bad token"}})
            return False
        return True

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def do_GET(self):  # noqa: N802
        s = self.state
        if self.path == "/readyz":
            return self.answer(200, {"ready": True})
        m = re.fullmatch(r"/api/tenants/([^/]+)/messages/([^/]+)", self.path)
        if m and self.authed():
            msg = s["messages"].get(m.group(2))
            return self.answer(200, msg) if msg else self.answer(404, {"error": {"code": "not_found"}})
        self.answer(404, {"error": {"code": "not_found"}})

    def do_POST(self):  # noqa: N802
        s = self.state
        body = self.body()
        if self.path == "/api/tenants" and self.authed():
            s["tenants"].add(json.loads(body)["id"])
            return self.answer(201, json.loads(body))
        m = re.fullmatch(r"/api/tenants/([^/]+)/integrations", self.path)
        if m and self.authed():
            spec = json.loads(body)
            if m.group(1) not in s["tenants"]:
                return self.answer(404, {"error": {"code": "not_found"}})
            s["integrations"][(m.group(1), spec["id"])] = spec
            return self.answer(201, {**spec, "tenant_id": m.group(1), "webhook_path": f"/webhooks/{m.group(1)}/{spec['id']}"})
        m = re.fullmatch(r"/webhooks/([^/]+)/([^/]+)", self.path)
        if m:
            spec = s["integrations"].get((m.group(1), m.group(2)))
            if not spec:
                return self.answer(404, {"error": {"code": "not_found"}})
            mid = os.urandom(16).hex()
            s["messages"][mid] = {"message_id": mid, "status": "received", "attempts": 0}

            def deliver():
                req = urllib.request.Request(
                    spec["producer"]["url"], data=body, method="POST",
                    headers={"content-type": "application/json", "x-vrsky-message-id": mid})
                with urllib.request.urlopen(req, timeout=5) as r:
                    ok = 200 <= r.status < 300
                s["messages"][mid] = {"message_id": mid, "status": self.outcome if ok else "retry", "attempts": 1}

            threading.Timer(0.2, deliver).start()
            return self.answer(202, {"message_id": mid})
        self.answer(404, {"error": {"code": "not_found"}})

    def do_DELETE(self):  # noqa: N802
        if self.authed():
            self.state["deleted"].append(self.path)
            self.answer(204)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_test_script() -> None:
    script = HERE / "vrsky/files/webhook-e2e.py"
    for outcome, want_rc in (("completed", 0), ("dead_letter", 1)):
        FakeNode.outcome = outcome
        FakeNode.state = {"tenants": set(), "integrations": {}, "messages": {}, "deleted": []}
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeNode)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = {**os.environ, "VRSKY_URL": f"http://127.0.0.1:{server.server_address[1]}",
               "VRSKY_ADMIN_TOKEN": FakeNode.token, "POD_IP": "127.0.0.1", "TEST_SINK_PORT": str(free_port()),
               "ALLOW_PRIVATE_TARGETS": "true", "TEST_TIMEOUT_S": "20", "TEST_TENANT": "", "TEST_TARGET_URL": "",
               "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            out = subprocess.run([sys.executable, "-c", script.read_text()], env=env, capture_output=True,
                                 text=True, timeout=60)
        finally:
            server.shutdown()
        w = f"vrsky/files/webhook-e2e.py [fake node, {outcome}]"
        check(out.returncode == want_rc, w, f"exited {out.returncode}, expected {want_rc}:\n{out.stdout}{out.stderr}")
        if want_rc == 0:
            check("PASS" in out.stdout, w, f"no PASS line:\n{out.stdout}")
        check(len(FakeNode.state["deleted"]) == 2, w, f"it must delete its integration and tenant, deleted {FakeNode.state['deleted']}")
    # Without a target and without allow_private_targets it refuses before creating anything.
    out = subprocess.run([sys.executable, "-c", script.read_text()], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "VRSKY_URL": "http://127.0.0.1:9", "VRSKY_ADMIN_TOKEN": "x",
                              "ALLOW_PRIVATE_TARGETS": "false", "TEST_TARGET_URL": ""})
    check(out.returncode == 1 and "allow_private_targets" in out.stdout, "vrsky/files/webhook-e2e.py [private target]",
          f"must refuse an in-pod target without allow_private_targets:\n{out.stdout}{out.stderr}")


# ---------------------------------------------------------------------------------------
# The nats-platform chart

PLATFORM_AUTH = "accounts {\n  VRSKY: { jetstream: enabled, users: [{user: runtime, password: check}] }\n}\n"


def platform_value_sets() -> list[tuple[str, dict]]:
    return [
        ("defaults", {}),
        ("auth config", {"auth": {"config": PLATFORM_AUTH}, "persistence": {"storageClassName": "ssd"}}),
        ("existing auth secret", {"auth": {"existingSecret": "platform-auth", "key": "auth.conf"}}),
        ("everything enabled", {"auth": {"config": PLATFORM_AUTH}, "cluster": {"tls": {"enabled": True}},
                                "serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True},
                                "global": {"image": {"registry": "registry.example.com", "pullSecretNames": ["regcred"]},
                                           "labels": {"team": "integrations"}},
                                "config": {"extra": "write_deadline: \"10s\""}}),
        ("merge and patch", {"statefulSet": {"merge": {"spec": {"minReadySeconds": 30}}},
                             "container": {"patch": [{"op": "replace", "path": "/resources/limits/memory", "value": "9Gi"}]},
                             "exporter": {"merge": {"resources": {"limits": {"cpu": "1"}}}},
                             "service": {"patch": [{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}]}}),
        ("5 members, sync 1s", {"replicas": 5, "config": {"jetstream": {"syncInterval": "1s"}}}),
        ("no exporter, no tls", {"exporter": {"enabled": False}, "tls": {"enabled": False}}),
    ]


def check_platform(r: Render, values: dict, vrsky_pod_labels: dict) -> None:
    w = r.where
    v = deep_merge(load_chart("nats-platform").values, values)
    sts = r.one("StatefulSet")
    if not sts:
        return
    spec = sts["spec"]
    name = sts["metadata"]["name"]
    pod_labels = spec["template"]["metadata"]["labels"]
    pod_spec = spec["template"]["spec"]
    check(spec["replicas"] == v["replicas"], w, "replicas")
    check(labels_match(spec["selector"]["matchLabels"], pod_labels), w, "the StatefulSet's selector does not match its pods")
    check(pod_labels.get("app.kubernetes.io/name") == "nats-platform", w, "pods must be app.kubernetes.io/name=nats-platform (prometheus.yml)")
    check(pod_labels.get("app.kubernetes.io/component") == "platform-nats", w, "pods must be component platform-nats (network policies)")
    headless = r.named("Service", spec["serviceName"])
    if check(headless, w, f"serviceName {spec['serviceName']} names no Service"):
        check(headless["spec"].get("clusterIP") == "None" and headless["spec"].get("publishNotReadyAddresses") is True, w,
              "the governing Service must be headless and publish not-ready addresses (routes)")
        check(headless["spec"]["selector"] == spec["selector"]["matchLabels"], w, "the headless Service's selector")
        check(6222 in [p["port"] for p in headless["spec"]["ports"]], w, "the headless Service lacks the cluster port")
    client = r.named("Service", name)
    check(client and labels_match(client["spec"]["selector"], pod_labels), w, "the client Service selects no member")
    check(spec["podManagementPolicy"] == "Parallel", w, "members must start together (Parallel)")
    c = container(pod_spec, "nats")
    if not check(c, w, "no nats container"):
        return
    check(c["resources"] == (v["container"]["resources"] if not values.get("container", {}).get("patch") else c["resources"]), w, "resources")
    if not values:
        check(c["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}, w,
              "each member must have 4 CPU and 8 GiB (requests = limits)")
        vct = spec["volumeClaimTemplates"][0]["spec"]
        check(vct["resources"]["requests"]["storage"] == "100Gi", w, "each member's store must be 100 GiB")
    if v["persistence"]["storageClassName"]:
        check(spec["volumeClaimTemplates"][0]["spec"].get("storageClassName") == v["persistence"]["storageClassName"], w, "storageClassName")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    check(mounts.get("/data") == "data" and spec["volumeClaimTemplates"][0]["metadata"]["name"] == "data", w, "/data must be the PVC")
    env = env_of(c)
    check(env.get("SERVER_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", w,
          "SERVER_NAME (server_name) must be the pod's name")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz?js-enabled-only=true"),
                        ("readinessProbe", "/healthz?js-server-only=true")):
        get = (c.get(probe) or {}).get("httpGet", {})
        check(get.get("path") == path and port_number(c, get.get("port")) == 8222, w, f"{probe} must GET {path} on 8222, has {get}")
    psc, csc = pod_spec.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, w, "non-root")
    check(csc.get("readOnlyRootFilesystem") is True, w, "read-only root filesystem")
    ann = spec["template"]["metadata"]["annotations"]
    check(ann.get("checksum/config") == sha256(r.manifests["nats-platform/templates/configmap.yaml"]), w, "checksum/config")
    if v["exporter"]["enabled"]:
        ex = container(pod_spec, "metrics-exporter")
        check(port_number(ex, "metrics") == v["exporter"]["port"], w, "the exporter's port must be named metrics (prometheus.yml)")
        check("http://localhost:8222" in ex.get("args", []) and "-jsz=all" in ex.get("args", []), w, "the exporter must read JetStream from 8222")
    else:
        check(not container(pod_spec, "metrics-exporter"), w, "exporter.enabled=false")
    if v["podDisruptionBudget"]["enabled"]:
        pdb = r.one("PodDisruptionBudget")
        check(pdb and labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels) and pdb["spec"]["maxUnavailable"] == 1,
              w, "the PDB must select the members, one unavailable at most")
    if not v["affinity"]:
        req = pod_spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        check(req[0]["topologyKey"] == "kubernetes.io/hostname" and labels_match(req[0]["labelSelector"]["matchLabels"], pod_labels),
              w, "members must be on different nodes")

    # nats.conf: routes over the headless Service, sync_interval, auth.
    cm = r.one("ConfigMap", name)
    conf = (cm.get("data") or {}).get("nats.conf", "")
    routes = re.findall(r'"nats://([^"]+)"', conf)
    want = [f"{name}-{i}.{spec['serviceName']}.{VRSKY_NS}.svc.cluster.local:6222" for i in range(v["replicas"])]
    check(routes == want, w, f"routes {routes} are not every member over the headless Service {want}")
    check(re.search(rf"jetstream \{{[^}}]*sync_interval: {re.escape(str(v['config']['jetstream']['syncInterval']))}\n", conf), w,
          f"the jetstream block lacks sync_interval: {v['config']['jetstream']['syncInterval']}")
    if not values:
        check("sync_interval: always" in conf, w, "the default must be sync_interval: always")
    has_auth = bool(v["auth"]["config"] or v["auth"]["existingSecret"])
    check(("include ./auth.conf" in conf) == has_auth, w, "include ./auth.conf must be there exactly with auth")
    sources = pod_spec["volumes"][0]["projected"]["sources"]
    if has_auth:
        secret_name = v["auth"]["existingSecret"] or f"{name}-auth"
        check({"secret": {"name": secret_name, "items": [{"key": v["auth"]["key"], "path": "auth.conf"}]}} in sources, w,
              "auth.conf is not projected beside nats.conf from the auth Secret")
        if not v["auth"]["existingSecret"]:
            s = r.one("Secret", secret_name)
            check(s and s.get("stringData", {}).get(v["auth"]["key"]) == v["auth"]["config"], w, "the auth Secret")
    else:
        check("ERROR: no auth is set" in r.notes, w, "NOTES must say auth is missing")
    if v["tls"]["enabled"]:
        check('cert_file: "/etc/nats-tls/tls.crt"' in conf and mounts.get("/etc/nats-tls") == "tls", w, "client TLS")
    nats_server_check(w, conf, v)

    for sm in r.all("ServiceMonitor"):
        ep = sm["spec"]["endpoints"][0]
        check(client and labels_match(sm["spec"]["selector"]["matchLabels"], client["metadata"]["labels"])
              and ep["port"] in [p["name"] for p in client["spec"]["ports"]], w, "the ServiceMonitor must scrape the client Service's metrics port")
        check({"action": "replace", "targetLabel": "job", "replacement": "vrsky-platform-nats"} in ep.get("relabelings", []), w,
              "ServiceMonitor job vrsky-platform-nats")
    for p in r.all("NetworkPolicy"):
        s = p["spec"]
        check(labels_match(s["podSelector"]["matchLabels"], pod_labels), w, "the platform policy selects no member")
        got = []
        for rule in s["ingress"]:
            for peer in rule["from"]:
                sel = peer.get("podSelector", {}).get("matchLabels")
                ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                who = "runtime" if sel and labels_match(sel, vrsky_pod_labels) else "members" if sel and labels_match(sel, pod_labels) else ns
                got.append((who, tuple(x["port"] for x in rule["ports"])))
        check(got == [("runtime", (4222, 8222)), ("members", (6222,)), (v["networkPolicy"]["monitoringNamespace"], (7777,))], w,
              f"the platform takes clients from the runtime, routes from members, scrapes from Prometheus only: {got}")


@functools.lru_cache(maxsize=None)
def nats_server_bin() -> str | None:
    """A nats-server that can read the platform's config (2.11.2 or newer): the one
    scripts/env.sh's ensure_nats_server exports, the tools virtualenv's, or PATH's
    (Debian's 2.9 does not know sync_interval)."""
    candidates = [os.environ.get("VRSKY_NATS__SERVER_BIN"), str(Path(sys.prefix) / "bin/nats-server"),
                  shutil.which("nats-server")]
    for c in candidates:
        if not c or not os.access(c, os.X_OK):
            continue
        out = subprocess.run([c, "--version"], capture_output=True, text=True)
        m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
        if m and tuple(map(int, m.groups())) >= (2, 11, 2):
            return c
    return None


@functools.lru_cache(maxsize=None)
def tls_files(directory: str) -> bool:
    """A throwaway key and self-signed certificate (and CA) under directory, for
    nats-server -t; False without openssl."""
    if not shutil.which("openssl"):
        return False
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-days", "1", "-subj", "/CN=check", "-keyout", str(d / "tls.key"),
                          "-out", str(d / "tls.crt")], capture_output=True)
    if out.returncode == 0:
        shutil.copy(d / "tls.crt", d / "ca.crt")
    return out.returncode == 0


def nats_server_check(w: str, conf: str, v: dict) -> None:
    """`nats-server -t` on the rendered nats.conf, its paths moved to a temporary dir."""
    bin_ = nats_server_bin()
    if not bin_:
        note(f"SKIP {w}: nats-server -t (no nats-server; scripts/test installs it)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        text = conf.replace('"/var/run/nats/nats.pid"', f'"{t}/nats.pid"').replace('"/data"', f'"{t}/data"')
        for tls_dir in ("/etc/nats-tls", "/etc/nats-cluster-tls"):
            if tls_dir in text:
                local = str(t / tls_dir.strip("/"))
                if not tls_files(local):
                    note(f"SKIP {w}: nats-server -t (no openssl for a test certificate)")
                    return
                text = text.replace(tls_dir + "/", local + "/")
        (t / "nats.conf").write_text(text)
        (t / "auth.conf").write_text(v["auth"]["config"] or PLATFORM_AUTH)
        out = subprocess.run([bin_, "-t", "-c", str(t / "nats.conf")], capture_output=True, text=True,
                             env={**os.environ, "SERVER_NAME": "check-0"}, timeout=30)
        check(out.returncode == 0, w, f"nats-server -t refuses nats.conf: {out.stderr.strip()}{out.stdout.strip()}")


def platform_negative() -> None:
    render_fails("nats-platform", "image older than 2.11.2", {"container": {"image": {"tag": "2.10-alpine"}}},
                 "needs nats-server 2.11.2 or newer", PLATFORM_RELEASE, VRSKY_NS)
    render_fails("nats-platform", "2.11.1", {"container": {"image": {"tag": "2.11.1"}}}, "2.11.2 or newer",
                 PLATFORM_RELEASE, VRSKY_NS)
    render_fails("nats-platform", "bad sync interval", {"config": {"jetstream": {"syncInterval": "never"}}},
                 "syncInterval must be always", PLATFORM_RELEASE, VRSKY_NS)
    render_fails("nats-platform", "bad patch", {"statefulSet": {"patch": [{"op": "remove", "path": "/spec/template/spec/nope"}]}},
                 'statefulSet.patch[0]: no member "nope"', PLATFORM_RELEASE, VRSKY_NS)


# ---------------------------------------------------------------------------------------
# The nats-tenant chart against the provisioner


def index_objects(objs: list[dict]) -> dict[tuple, dict]:
    out = {}
    for o in objs:
        key = (o.get("apiVersion"), o.get("kind"), o.get("metadata", {}).get("namespace"), o.get("metadata", {}).get("name"))
        out[key] = o
    return out


def strip_helm(o: dict) -> dict:
    """Helm's own labels, were any added (the chart adds none: the provisioner does not)."""
    o = copy.deepcopy(o)
    labels = o.get("metadata", {}).get("labels", {})
    for k in ("helm.sh/chart",):
        labels.pop(k, None)
    return o


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"{path}/{k}: only in the golden file: {json.dumps(b[k])[:200]}")
            elif k not in b:
                out.append(f"{path}/{k}: only in the chart: {json.dumps(a[k])[:200]}")
            else:
                out.extend(diff(a[k], b[k], f"{path}/{k}"))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items in the chart, {len(b)} in the golden file"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path}: chart {json.dumps(a)[:200]} != golden {json.dumps(b)[:200]}"]


def check_tenant(golden_override: str | None) -> None:
    golden_values = yaml.safe_load((HERE / "nats-tenant/tests/values-golden.yaml").read_text())
    sets = [("golden values", golden_values),
            ("defaults with auth", {"auth": "operator: \"OJWT\"\n"}),
            ("instance 12 of a long tenant", {**golden_values, "tenant": "a" * 52, "instance": 12})]
    for label, values in sets:
        lint("nats-tenant", label, values)
        r = render("nats-tenant", label, values, "nats-tenant", TENANTS_NS)
        validate(r)
        w = r.where
        name = f"nats-{values.get('tenant', 'acme')}-{values.get('instance', 1)}"
        d, s, sec = r.one("Deployment", name), r.one("Service", name), r.one("Secret", name)
        for o in (d, s, sec):
            check(o and o["metadata"]["namespace"] == TENANTS_NS, w, f"{o.get('kind')} must be in {TENANTS_NS}")
            check(o and not any(k.startswith("helm.sh/") or v2 == "Helm" for k, v2 in o["metadata"]["labels"].items()), w,
                  "no Helm management labels: the provisioner adds none")
        if d:
            pod = d["spec"]["template"]
            check(labels_match(d["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]), w, "selector")
            check(s and labels_match(s["spec"]["selector"], pod["metadata"]["labels"]), w, "the Service selects no pod")
            vols = {x["name"]: x for x in pod["spec"]["volumes"]}
            check(vols["config"]["secret"]["secretName"] == name, w, "the config volume is the instance's Secret")
        if sec:
            conf = sec["stringData"]["nats.conf"]
            check(values["auth"] in conf and f'server_name: "{name}"' in conf, w, "nats.conf lacks the auth block or server_name")
    render_fails("nats-tenant", "no auth", {}, "auth is required", "nats-tenant", TENANTS_NS)
    render_fails("nats-tenant", "tenant id too long", {"auth": "x\n", "tenant": "a" * 60}, "63 characters",
                 "nats-tenant", TENANTS_NS)
    render_fails("nats-tenant", "not a tenant id", {"auth": "x\n", "tenant": "Acme"}, "is not a tenant id",
                 "nats-tenant", TENANTS_NS)

    golden = Path(golden_override) if golden_override else HERE / "nats-tenant/tests/provisioner-objects.yaml"
    if not golden.exists():
        note(f"SKIP nats-tenant golden comparison: {golden.relative_to(ROOT) if golden.is_relative_to(ROOT) else golden} "
             "does not exist yet (the Rust provisioner test writes it)")
        return
    want = index_objects([o for o in yaml.safe_load_all(golden.read_text()) if o])
    got = index_objects([strip_helm(o) for _, o in render("nats-tenant", "golden", golden_values, "nats-tenant", TENANTS_NS).objects])
    w = f"nats-tenant [golden {golden.name}]"
    check(set(got) == set(want), w, f"objects differ: only in the chart {sorted(set(got) - set(want))}, "
          f"only in the golden file {sorted(set(want) - set(got))}")
    for key in sorted(set(got) & set(want), key=str):
        for d in diff(got[key], strip_helm(want[key])):
            check(False, w, f"{key[1]}/{key[3]}{d}")
    note(f"nats-tenant equals {golden.name} ({len(want)} objects)")


# ---------------------------------------------------------------------------------------
# The Dockerfile agrees with the charts


def check_dockerfile() -> None:
    path = ROOT / "deploy/Dockerfile"
    text = path.read_text()
    w = "deploy/Dockerfile"
    values = load_chart("vrsky").values
    exposed = {int(p.split("/")[0]) for line in re.findall(r"^EXPOSE\s+(.+)$", text, re.M) for p in line.split()}
    check({values["ports"]["http"], values["ports"]["grpc"]} <= exposed, w, f"EXPOSE {sorted(exposed)} lacks the chart's ports")
    users = re.findall(r"^USER\s+(\S+)$", text, re.M)
    uid = str(values["podSecurityContext"]["runAsUser"])
    check(users and users[-1].split(":")[0] == uid, w, f"the final USER {users[-1] if users else None} is not the chart's runAsUser {uid}")
    check(re.search(r'^ENTRYPOINT \["/usr/local/bin/vrsky"\]$|^ENTRYPOINT \["vrsky"\]$', text, re.M), w, "ENTRYPOINT must be vrsky")
    check("nats-server" in text, w, "the image must carry nats-server (serve looks for it at start)")


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", help="the nats-tenant golden file (default: nats-tenant/tests/provisioner-objects.yaml)")
    parser.add_argument("--update-configs", action="store_true",
                        help="rewrite vrsky/tests/config-*.toml (the rendered vrsky.toml of each vrsky value set), "
                             "removing those no value set renders")
    args = parser.parse_args()
    started = time.monotonic()
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), kubernetes-validate "
          f"{kubernetes_validate.__version__}, schemas {K8S_VERSION}", flush=True)

    keys, env_keys = config_keys()
    check(env_keys.get("VRSKY_NODE_ID") == "cluster.node_id", "README.md",
          "the Configuration table must name VRSKY_NODE_ID for cluster.node_id (the chart sets it from the pod's name)")

    print("vrsky", flush=True)
    guarded("deploy/helm/vrsky/files/config-schema.yaml", check_schema, keys)
    dashboards_identical()
    helpers_identical()
    vrsky_pod_labels: dict = {}
    goldens = ConfigGoldens([label for label, _ in vrsky_value_sets()], args.update_configs)
    for label, values in vrsky_value_sets():
        where = f"vrsky [{label}]"
        guarded(where, lint, "vrsky", label, values)
        r = guarded(where, render, "vrsky", label, values, VRSKY_RELEASE, VRSKY_NS)
        if r is None:
            continue
        guarded(where, validate, r)
        guarded(where, check_vrsky, r, values, keys, env_keys)
        guarded(where, goldens.compare, label, r)
        if values is MERGE_PATCH:
            guarded(where, check_merge_patch_effects, r)
        if values is MINIMAL:
            vrsky_pod_labels = guarded(where, lambda: r.one("StatefulSet")["spec"]["template"]["metadata"]["labels"]) or {}
        note(f"{label}: {len(r.objects)} objects")
    guarded("deploy/helm/vrsky/tests", goldens.finish)
    guarded("vrsky [negative]", vrsky_negative)
    guarded("vrsky [checksum]", checksum_follows_config)
    guarded("vrsky [test script]", run_test_script)

    print("nats-platform", flush=True)
    for label, values in platform_value_sets():
        where = f"nats-platform [{label}]"
        guarded(where, lint, "nats-platform", label, values)
        r = guarded(where, render, "nats-platform", label, values, PLATFORM_RELEASE, VRSKY_NS)
        if r is None:
            continue
        guarded(where, validate, r)
        guarded(where, check_platform, r, values, vrsky_pod_labels)
        note(f"{label}: {len(r.objects)} objects")
    guarded("nats-platform [negative]", platform_negative)

    print("nats-tenant", flush=True)
    guarded("nats-tenant", check_tenant, args.golden)

    guarded("deploy/Dockerfile", check_dockerfile)

    elapsed = time.monotonic() - started
    if FAILURES:
        print(f"\n{len(FAILURES)} of {CHECKS} checks failed ({elapsed:.1f} s):", file=sys.stderr)
        for f in FAILURES:
            print(f"FAIL {f}", file=sys.stderr)
        return 1
    print(f"charts ok: {CHECKS} checks passed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
