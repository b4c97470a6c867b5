#!/usr/bin/env python3
"""Cross-file rules of the compose and Kubernetes deployments that no schema can express.

Run by deploy/check/run.sh after `docker-compose config` and `kustomize build` (needs
PyYAML). Input: the compose model as `docker-compose config --format json` printed it,
and the rendered Kubernetes manifests. Fails (exit 1) when:

compose
- a service of the contract is missing (postgres, redis, opensearch, migrate, scheduler,
  worker, serve, prometheus, grafana), OpenSearch is not the official 2.19 image, or
  there are fewer than two workers;
- a `depends_on: service_healthy` target has no health check, or a
  `service_completed_successfully` target is not a one-shot (`restart: "no"`);
- a tidemark process does not wait for `migrate`, or does not run the image built from
  the repository's Dockerfile;
- the workers' `stop_grace_period` is not longer than `[worker] shutdown_timeout` of the
  configuration they mount;
- Prometheus scrapes a tidemark service on a port other than its TIDEMARK_ADMIN_ADDR, or
  a mounted file does not exist;

kubernetes
- an object of the contract is missing (ConfigMap, Secret, migrate Job, the scheduler,
  worker and serve Deployments, an autoscaling/v2 HPA, a PodDisruptionBudget, a Service);
- the scheduler is not 1 replica with strategy Recreate;
- the workers' terminationGracePeriodSeconds is not longer than the ConfigMap's
  `[worker] shutdown_timeout`;
- a long-running container lacks liveness `/healthz` and readiness `/readyz` probes on
  the container port of its TIDEMARK_ADMIN_ADDR, or resources, or runs possibly as root,
  with a writable root file system or with privilege escalation;
- the HPA, a PodDisruptionBudget or a Service points at nothing, or a pod mounts a
  ConfigMap or Secret that is not rendered;
- the Secret does not look like a placeholder (a real credential must not be in git).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

DEFAULT_SHUTDOWN_TIMEOUT = 30.0  # README, "Configuration": [worker] shutdown_timeout = "30s"
TIDEMARK_COMPOSE_SERVICES = ("migrate", "scheduler", "worker", "serve")
LONG_RUNNING = ("scheduler", "worker", "serve")

problems: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def seconds(text: str | int | float) -> float:
    """A humantime-like duration (`45s`, `1m30s`, `500ms`) or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)", text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"cannot read duration {text!r}")
    return total


def shutdown_timeout(toml_text: str) -> float:
    conf = tomllib.loads(toml_text)
    return seconds(conf.get("worker", {}).get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))


def admin_port(env: dict[str, str] | list | None) -> int | None:
    if isinstance(env, list):  # Kubernetes: [{name, value}]
        env = {e["name"]: e.get("value") for e in env}
    addr = (env or {}).get("TIDEMARK_ADMIN_ADDR")
    return int(addr.rsplit(":", 1)[1]) if addr else None


# ---------------------------------------------------------------------------- compose


def check_compose(model: dict, root: Path, compose_dir: Path) -> None:
    where = "compose"
    services = model.get("services", {})
    for name in ("postgres", "redis", "opensearch", "prometheus", "grafana") + TIDEMARK_COMPOSE_SERVICES:
        if name not in services:
            problem(where, f"service {name!r} missing")
    if not str(services.get("opensearch", {}).get("image", "")).startswith("opensearchproject/opensearch:2.19."):
        problem(where, "opensearch must run the official opensearchproject/opensearch:2.19.x image")

    images = set()
    for name in TIDEMARK_COMPOSE_SERVICES:
        svc = services.get(name, {})
        build = svc.get("build") or {}
        if Path(build.get("context", "")).resolve() != root or build.get("dockerfile") != "Dockerfile":
            problem(where, f"{name}: must build the repository's Dockerfile (context = repository root)")
        images.add(svc.get("image"))
        if name != "migrate":
            cond = svc.get("depends_on", {}).get("migrate", {}).get("condition")
            if cond != "service_completed_successfully":
                problem(where, f"{name}: must depend on migrate with condition service_completed_successfully")
    if len(images) != 1:
        problem(where, f"the tidemark services use different images: {sorted(map(str, images))}")
    if not (root / "Dockerfile").is_file():
        problem(where, "no Dockerfile at the repository root")

    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            target = services.get(dep, {})
            cond = spec.get("condition")
            if cond == "service_healthy":
                hc = target.get("healthcheck") or {}
                if not hc.get("test") or hc.get("disable"):
                    problem(where, f"{name} waits for {dep} to be healthy, but {dep} has no health check")
            elif cond == "service_completed_successfully" and target.get("restart", "no") != "no":
                problem(where, f"{name} waits for {dep} to complete, but {dep} restarts ({target.get('restart')})")
        for vol in svc.get("volumes") or []:
            if vol.get("type") == "bind" and not Path(vol["source"]).exists():
                problem(where, f"{name}: mounts {vol['source']}, which does not exist")
        for long_running in LONG_RUNNING:
            if name == long_running and not (svc.get("healthcheck") or {}).get("test"):
                problem(where, f"{name}: no health check")

    worker = services.get("worker", {})
    if int((worker.get("deploy") or {}).get("replicas", 1)) < 2:
        problem(where, "worker: run at least two replicas")
    configs = model.get("configs", {})
    toml_text = None
    for ref in worker.get("configs") or []:
        if ref.get("target") == "/etc/tidemark/tidemark.toml":
            path = Path(configs.get(ref["source"], {}).get("file", ""))
            if not path.is_file():
                problem(where, f"config {ref['source']}: {path} does not exist")
            else:
                toml_text = path.read_text()
    timeout = shutdown_timeout(toml_text) if toml_text is not None else DEFAULT_SHUTDOWN_TIMEOUT
    grace = seconds(worker.get("stop_grace_period", "10s"))
    if grace <= timeout:
        problem(where, f"worker: stop_grace_period {grace:g}s must exceed worker.shutdown_timeout {timeout:g}s")

    # Prometheus' scrape targets (dns_sd names, or static host:port) against admin ports.
    prom = yaml.safe_load((root / "deploy/prometheus/prometheus.yml").read_text())
    scraped = set()
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for host in sd.get("names", []):
                scraped.add(host)
                svc = services.get(host)
                if svc is None:
                    problem(where, f"prometheus job {job['job_name']} scrapes {host!r}, no such service")
                elif admin_port(svc.get("environment")) != sd.get("port"):
                    problem(where, f"prometheus scrapes {host}:{sd.get('port')}, but its admin port is {admin_port(svc.get('environment'))}")
    for name in LONG_RUNNING:
        if name not in scraped:
            problem(where, f"prometheus does not scrape {name}")
        if admin_port(services.get(name, {}).get("environment")) is None:
            problem(where, f"{name}: TIDEMARK_ADMIN_ADDR not set, so no /metrics, /healthz, /readyz")


# ---------------------------------------------------------------------------- kubernetes


def pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec", {})
    return spec.get("template", {}).get("spec") if obj["kind"] in ("Deployment", "Job") else None


def component(obj: dict) -> str | None:
    return obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_probe(where: str, probe: dict | None, path: str, ports: dict, admin: int | None) -> None:
    get = (probe or {}).get("httpGet")
    if not get or get.get("path") != path:
        problem(where, f"needs an httpGet probe on {path}")
        return
    port = get.get("port")
    number = ports.get(port) if isinstance(port, str) else port
    if number is None:
        problem(where, f"probe {path}: port {port!r} is not a container port")
    elif number != admin:
        problem(where, f"probe {path}: port {number} is not the admin port {admin}")


def check_k8s(objs: list[dict]) -> None:
    by_kind: dict[str, list[dict]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    deployments = {component(o): o for o in by_kind.get("Deployment", [])}
    where = "k8s"

    for kind in ("ConfigMap", "Secret", "Job", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"):
        if kind not in by_kind:
            problem(where, f"no {kind}")
    for comp in LONG_RUNNING:
        if comp not in deployments:
            problem(where, f"no Deployment with app.kubernetes.io/component={comp}")
    if not any(component(j) == "migrate" for j in by_kind.get("Job", [])):
        problem(where, "no migrate Job")

    sched = deployments.get("scheduler", {}).get("spec", {})
    if sched and (sched.get("replicas") != 1 or sched.get("strategy", {}).get("type") != "Recreate"):
        problem(where, "scheduler: replicas 1 and strategy Recreate")

    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    for obj in by_kind.get("Deployment", []) + by_kind.get("Job", []):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj) or {}
        pod_sc = spec.get("securityContext", {})
        for vol in spec.get("volumes", []):
            if "configMap" in vol and ("ConfigMap", vol["configMap"]["name"]) not in names:
                problem(name, f"mounts ConfigMap {vol['configMap']['name']}, which is not rendered")
            if "secret" in vol and ("Secret", vol["secret"]["secretName"]) not in names:
                problem(name, f"mounts Secret {vol['secret']['secretName']}, which is not rendered")
        for c in spec.get("containers", []):
            cw = f"{name} container {c['name']}"
            sc = c.get("securityContext", {})
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            if not non_root or uid in (None, 0):
                problem(cw, "must run as non-root with a non-zero runAsUser")
            if sc.get("readOnlyRootFilesystem") is not True:
                problem(cw, "readOnlyRootFilesystem: true")
            if sc.get("allowPrivilegeEscalation") is not False:
                problem(cw, "allowPrivilegeEscalation: false")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits", {}).get("memory"):
                problem(cw, "needs resource requests and a memory limit")
            for src in c.get("envFrom", []):
                ref = src.get("secretRef") or src.get("configMapRef")
                kind = "Secret" if "secretRef" in src else "ConfigMap"
                if (kind, ref["name"]) not in names:
                    problem(cw, f"envFrom {kind} {ref['name']}, which is not rendered")
            if obj["kind"] != "Deployment":
                continue
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            admin = admin_port(c.get("env"))
            if admin is None:
                problem(cw, "TIDEMARK_ADMIN_ADDR not set")
            check_probe(cw, c.get("livenessProbe"), "/healthz", ports, admin)
            check_probe(cw, c.get("readinessProbe"), "/readyz", ports, admin)

    worker = deployments.get("worker")
    if worker:
        spec = pod_spec(worker)
        toml_text = None
        for vol in spec.get("volumes", []):
            cm = configmaps.get(vol.get("configMap", {}).get("name"))
            if cm and "tidemark.toml" in cm.get("data", {}):
                toml_text = cm["data"]["tidemark.toml"]
        timeout = shutdown_timeout(toml_text) if toml_text else DEFAULT_SHUTDOWN_TIMEOUT
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace <= timeout:
            problem("k8s worker", f"terminationGracePeriodSeconds {grace} must exceed worker.shutdown_timeout {timeout:g}s")

    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        if hpa["apiVersion"] != "autoscaling/v2":
            problem(f"HPA {hpa['metadata']['name']}", "use autoscaling/v2")
        ref = hpa["spec"]["scaleTargetRef"]
        target = next((d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == ref["name"]), None)
        if ref["kind"] != "Deployment" or target is None:
            problem(f"HPA {hpa['metadata']['name']}", f"scales {ref['kind']}/{ref['name']}, which is not rendered")
        elif "replicas" in target["spec"]:
            problem(f"HPA {hpa['metadata']['name']}", f"{ref['name']} sets replicas, which every apply would reset")
    templates = [pod_spec(o) is not None and o["spec"]["template"]["metadata"].get("labels", {}) for o in by_kind.get("Deployment", [])]
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if not any(matches(sel, t) for t in templates):
            problem(f"PDB {pdb['metadata']['name']}", "selects no pod")
    for svc in by_kind.get("Service", []):
        if not any(matches(svc["spec"].get("selector", {}), t) for t in templates):
            problem(f"Service {svc['metadata']['name']}", "selects no pod")
    for secret in by_kind.get("Secret", []):
        values = list((secret.get("stringData") or {}).values()) + list((secret.get("data") or {}).values())
        if not all("REPLACE_ME" in v or ".invalid" in v for v in values):
            problem(f"Secret {secret['metadata']['name']}", "every value must be a placeholder (REPLACE_ME / .invalid)")


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compose-json", type=Path, required=True, help="output of `docker-compose config --format json`")
    ap.add_argument("--k8s", type=Path, required=True, help="output of `kustomize build deploy/k8s`")
    args = ap.parse_args()
    check_compose(json.loads(args.compose_json.read_text()), root, root / "deploy/compose")
    objs = [o for o in yaml.safe_load_all(args.k8s.read_text()) if o]
    check_k8s(objs)
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    print(f"compose: {len(json.loads(args.compose_json.read_text())['services'])} services; k8s: {len(objs)} objects; grace periods, probes, security, selectors ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
