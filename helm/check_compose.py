#!/usr/bin/env python3
"""Check that docker/compose.yaml mirrors the Helm chart with its default values.

Compared: the pods (names, POD_NAME, peer DNS names from the headless Service), container
ports, the raftlite container's environment variable names, the readiness probe, the security
settings and the node config file (docker/raftlite.yaml against the chart's ConfigMap).

    python3 helm/check_compose.py     # exit 0: they agree; 1: lists every difference

The chart side is read from values.yaml and the templates; the few template expressions the
ConfigMap uses are substituted here (Helm's own rendering is linted by helm/lint.py).
"""

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "raftlite"
COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_CONFIG = ROOT / "docker" / "raftlite.yaml"
RELEASE = "raftlite"  # the release name the compose file mirrors (StatefulSet "raftlite")
NAMESPACE = "default"
# Deliberate differences: people read compose logs, log collectors read Kubernetes logs.
CONFIG_MAY_DIFFER = {"log_format"}


def lookup(values, path):
    for part in path.split("."):
        values = values[part]
    return values


def chart_env_names(helpers):
    """Names set unconditionally by the "raftlite.env" template (default values)."""
    block = helpers.split('{{- define "raftlite.env" -}}', 1)[1]
    names, depth = [], 0
    for line in block.splitlines():
        if re.match(r"\s*\{\{-? (with|if|range) ", line):
            depth += 1
        elif re.match(r"\s*\{\{-? end", line):
            if depth == 0:
                break
            depth -= 1
        elif depth == 0:
            m = re.match(r"- name: ([A-Z_][A-Z0-9_]*)$", line.strip())
            if m:
                names.append(m.group(1))
    return names


def render_configmap(values):
    """raftlite.yaml as the ConfigMap template renders it with `values`."""
    text = (CHART / "templates" / "configmap.yaml").read_text()
    body = text.split("raftlite.yaml: |", 1)[1]
    lines = [l[4:] for l in body.splitlines() if l.startswith("    ") and "{{-" not in l]
    headless = f"{RELEASE}-headless"
    pattern = (
        f"{RELEASE}.{headless}.${{POD_NAMESPACE}}.svc.{values['clusterDomain']}"
        f":{values['ports']['peer']}"
    )

    def substitute(m):
        expr = m.group(1).strip()
        if expr == 'include "raftlite.peerPattern" .':
            return pattern
        quote = expr.endswith("| quote")
        path = expr.removesuffix("| quote").strip().removeprefix(".Values.")
        value = lookup(values, path)
        if isinstance(value, bool):
            value = str(value).lower()
        return f'"{value}"' if quote else str(value)

    rendered = re.sub(r"\{\{(.*?)\}\}", substitute, "\n".join(lines))
    return yaml.safe_load(rendered)


def main():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    compose = yaml.safe_load(COMPOSE.read_text())
    problems = []

    def check(cond, message):
        if not cond:
            problems.append(message)

    grpc, metrics = values["ports"]["grpc"], values["ports"]["metrics"]
    pods = sorted(n for n in compose["services"] if re.fullmatch(rf"{RELEASE}-\d+", n))
    initial = [n for n in pods if "profiles" not in compose["services"][n]]
    check(
        initial == [f"{RELEASE}-{i}" for i in range(values["replicas"])],
        f"compose starts {initial}, the chart {values['replicas']} replicas",
    )
    expected_env = set(chart_env_names(helpers))
    check(expected_env, "no environment found in the chart's raftlite.env template")
    readiness = values["probes"]["readiness"]
    sec, pod_sec = values["securityContext"], values["podSecurityContext"]
    for name in pods:
        svc = compose["services"][name]
        where = f"compose service {name}"
        env = svc.get("environment") or {}
        check(set(env) == expected_env, f"{where}: env {sorted(env)} != chart {sorted(expected_env)}")
        check(env.get("POD_NAME") == name, f"{where}: POD_NAME is {env.get('POD_NAME')!r}")
        check(env.get("POD_NAMESPACE") == NAMESPACE, f"{where}: POD_NAMESPACE != {NAMESPACE}")
        check("HOSTNAME" not in env, f"{where}: sets HOSTNAME")
        check(svc.get("hostname") == name, f"{where}: hostname is {svc.get('hostname')!r}")
        dns = f"{name}.{RELEASE}-headless.{NAMESPACE}.svc.{values['clusterDomain']}"
        aliases = (svc.get("networks") or {}).get(RELEASE, {}).get("aliases", [])
        check(dns in aliases, f"{where}: no network alias {dns} (the headless Service name)")
        published = {int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", [])}
        check(published <= {grpc, metrics}, f"{where}: container ports {published} not in chart ports")
        test = svc["healthcheck"]["test"]
        args = dict(zip(test[3::2], test[4::2])) if test[:3] == ["CMD", "/usr/local/bin/raftlite", "health"] else {}
        check(args.get("--addr", "").endswith(f":{grpc}"), f"{where}: healthcheck not on port {grpc}: {test}")
        check(
            args.get("--service") == readiness["service"],
            f"{where}: healthcheck service {args.get('--service')!r} != readiness {readiness['service']!r}",
        )
        hc = svc["healthcheck"]
        check(hc.get("interval") == f"{readiness['periodSeconds']}s", f"{where}: healthcheck interval != periodSeconds")
        check(hc.get("timeout") == f"{readiness['timeoutSeconds']}s", f"{where}: healthcheck timeout != timeoutSeconds")
        check(hc.get("retries") == readiness["failureThreshold"], f"{where}: healthcheck retries != failureThreshold")
        check(
            svc.get("user") == f"{pod_sec['runAsUser']}:{pod_sec['runAsGroup']}",
            f"{where}: user != runAsUser:runAsGroup",
        )
        check(svc.get("read_only") is sec["readOnlyRootFilesystem"], f"{where}: read_only != readOnlyRootFilesystem")
        check(svc.get("cap_drop") == sec["capabilities"]["drop"], f"{where}: cap_drop != capabilities.drop")
        check(
            ("no-new-privileges:true" in (svc.get("security_opt") or [])) == (not sec["allowPrivilegeEscalation"]),
            f"{where}: no-new-privileges != not allowPrivilegeEscalation",
        )
        check(svc.get("command") == ["serve"], f"{where}: command != the chart's args [serve]")
        check(
            any(str(v).startswith("data-") and str(v).endswith(":/var/lib/raftlite") for v in svc.get("volumes", [])),
            f"{where}: no own volume at /var/lib/raftlite",
        )
        check(
            any(str(v).endswith(":" + env.get("RAFTLITE_CONFIG", "?") + ":ro") for v in svc.get("volumes", [])),
            f"{where}: the config file is not mounted read-only at RAFTLITE_CONFIG",
        )

    chart_config = render_configmap(values)
    compose_config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    for key in sorted(set(chart_config) | set(compose_config)):
        if key in CONFIG_MAY_DIFFER:
            continue
        check(
            chart_config.get(key) == compose_config.get(key),
            f"config {key}: chart {chart_config.get(key)!r} != compose {compose_config.get(key)!r}",
        )
    check(chart_config["listen"].endswith(f":{grpc}"), "config listen is not the grpc port")
    check(chart_config["metrics_addr"].endswith(f":{metrics}"), "config metrics_addr is not the metrics port")

    if problems:
        print("compose and chart disagree:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(f"ok: compose mirrors the chart ({len(pods)} pods, env {sorted(expected_env)}, ports {grpc}/{metrics})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
