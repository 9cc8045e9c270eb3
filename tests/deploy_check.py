#!/usr/bin/env python3
"""Checks the Kubernetes manifests against the default configuration: the probe paths
exist on the control API, and the ports the manifests name are the ones the default
config (as the ConfigMap and config/switchboard.toml set them) listens on; the drain fits
in the termination grace period. Exits non-zero, saying what is wrong, otherwise.
Run by tests/it/deploy.rs; needs PyYAML (installed with kubernetes-validate)."""

import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
errors = []


def duration_s(text):
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not match:
        raise ValueError(f"unexpected duration {text!r}")
    value, unit = int(match[1]), match[2]
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


default = tomllib.loads((ROOT / "config" / "switchboard.toml").read_text())
docs = {}
for path in [*K8S.glob("*.yaml"), *K8S.glob("components/*/*.yaml")]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] not in ("Kustomization", "Component"):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc

configmap = docs[("ConfigMap", "switchboard")]
config = tomllib.loads(configmap["data"]["switchboard.toml"])
merged = {
    section: {**default[section], **config.get(section, {})}
    for section in default
    if isinstance(default[section], dict)
}

deployment = docs[("Deployment", "switchboard")]
pod = deployment["spec"]["template"]["spec"]
container = pod["containers"][0]
ports = {port["name"]: port["containerPort"] for port in container["ports"]}
ws_port = port_of(merged["server"]["listen"])
control_port = port_of(merged["control"]["listen"])
if ports.get("ws") != ws_port:
    errors.append(f"container port ws {ports.get('ws')} != server.listen port {ws_port}")
if ports.get("control") != control_port:
    errors.append(f"container port control {ports.get('control')} != control.listen port {control_port}")

# Probes: readiness and startup on /readyz, liveness on /healthz, on the control port.
expected = {"readinessProbe": "/readyz", "startupProbe": "/readyz", "livenessProbe": "/healthz"}
for probe, path in expected.items():
    get = container.get(probe, {}).get("httpGet")
    if not get:
        errors.append(f"{probe} is missing")
        continue
    if get["path"] != path:
        errors.append(f"{probe} asks {get['path']}, expected {path}")
    if get["port"] not in ("control", control_port):
        errors.append(f"{probe} checks port {get['port']}, not the control port")
readiness = container["readinessProbe"]
if readiness.get("failureThreshold", 3) < 2:
    errors.append("readinessProbe.failureThreshold < 2: one Redis blip would empty the Service")

# The drain must end before Kubernetes kills the pod.
shutdown = merged["shutdown"]
deadline = duration_s(shutdown.get("drain_deadline", "0s"))
if deadline == 0:
    deadline = sum(duration_s(shutdown[key]) for key in ("drain_delay", "drain_window", "grace"))
grace_period = pod.get("terminationGracePeriodSeconds", 30)
if grace_period <= deadline:
    errors.append(f"terminationGracePeriodSeconds {grace_period} <= drain deadline {deadline} s")
if pod.get("enableServiceLinks", True):
    errors.append("enableServiceLinks should be false")
pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
if "drain" not in pre_stop:
    errors.append(f"preStop does not start the drain: {pre_stop}")
security = container.get("securityContext", {})
if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation", True):
    errors.append("container securityContext must be read-only and without privilege escalation")
if not pod.get("securityContext", {}).get("runAsNonRoot"):
    errors.append("pod securityContext must set runAsNonRoot")
if ":latest" in container["image"] or ":" not in container["image"]:
    errors.append(f"image {container['image']} has no version tag")
if "memory" not in container.get("resources", {}).get("limits", {}):
    errors.append("no memory limit")

# Services route to the named ports.
for name, port_name in (("switchboard-ws", "ws"), ("switchboard-control", "control")):
    service = docs.get(("Service", name))
    if not service:
        errors.append(f"Service {name} is missing")
        continue
    targets = [port["targetPort"] for port in service["spec"]["ports"]]
    if port_name not in targets:
        errors.append(f"Service {name} does not target port {port_name}: {targets}")

for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "Secret", "ServiceMonitor"):
    if not any(k == kind for k, _ in docs):
        errors.append(f"no {kind}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"deploy/kubernetes: {len(docs)} resources consistent with config/switchboard.toml")
