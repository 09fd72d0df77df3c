#!/usr/bin/env python3
"""Check that docker/compose.yaml mirrors the Helm chart with its default values.

The chart side is what Helm renders (helm/render.py: the real Helm library, through
helm-sdkpy's lint) for release "raftlite" (fullnameOverride) with the default values. Compared:

- the pods: names, hostnames, the headless Service's DNS names as network aliases;
- the raftlite container's environment: the same names and values ($(POD_NAME) and the
  downward API filled in per pod), TLS and token files included;
- container ports (compose `expose`) incl. the peer port; only client and metrics published;
- the readiness check: the chart's exec probe command (`raftlite health`), period, timeout,
  threshold;
- mounts: the data volume, the config file, /etc/raftlite/tls, auth.yaml and the admin token
  read-only at the chart's paths, from docker/gen-secrets.sh's directory;
- user / read-only / capabilities / no-new-privileges and the command;
- the node config file: docker/raftlite.yaml equals the ConfigMap's raftlite.yaml (only
  `log_format` may differ);
- the `ctl` service: the scale-down hook Job's client settings (address, CA, admin token);
- docker/gen-secrets.sh (run into a temporary directory, checked with openssl): the chart's
  certificate SANs for namespace "default", signed by ca.crt, and auth.yaml's token names,
  roles and hashes.

    python3 helm/check_compose.py     # exit 0: they agree; 1: lists every difference;
                                      # 2: helm-sdkpy missing
"""

import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker" / "compose.yaml"
COMPOSE_CONFIG = ROOT / "docker" / "raftlite.yaml"
GEN_SECRETS = ROOT / "docker" / "gen-secrets.sh"
RELEASE = "raftlite"  # the release name the compose file mirrors (StatefulSet "raftlite")
NAMESPACE = "default"
SECRETS = "${RAFTLITE_SECRETS:-./secrets}"  # compose's source of the gen-secrets.sh files
GEN_SECRETS_PODS = 4  # docker/gen-secrets.sh writes pods 0..3 (raftlite-3: profile scale)
# Deliberate differences: people read compose logs, log collectors read Kubernetes logs.
CONFIG_MAY_DIFFER = {"log_format"}

# The chart's SANs per pod for a release "raftlite" in namespace "default" (lint renders with
# no namespace, so the helper gets a made-up root).
SANS_PROBE = (
    '{{- $root := dict "Values" .Values "Chart" .Chart "Release" (dict "Name" "%s" "Namespace" "%s") }}'
    '{{- $out := list }}{{- range $i := until %d }}'
    '{{- $out = append $out (include "raftlite.certDnsNames" (dict "root" $root "ordinal" $i) | fromYamlArray) }}'
    "{{- end }}"
) % (RELEASE, NAMESPACE, GEN_SECRETS_PODS)


def parse_volume(v):
    """(source, target, read_only) of a compose short-syntax volume."""
    parts = str(v).split(":")
    ro = parts[-1] == "ro"
    if ro or parts[-1] == "rw":
        parts = parts[:-1]
    # The source may hold ${VAR:-default}, whose ':' is not a separator.
    target = parts[-1]
    source = ":".join(parts[:-1])
    return source, target, ro


def main():
    values = render.merge(render.default_values(), {"fullnameOverride": RELEASE})
    rendered = render.render(values, probes={"sans": SANS_PROBE})
    problems = []

    def check(cond, message):
        if not cond:
            problems.append(message)
        return cond

    for message in rendered.fails:
        problems.append(f"chart: template fail/required: {message}")
    compose = yaml.safe_load(COMPOSE.read_text())
    sts = rendered.one("StatefulSet", RELEASE)
    pod_spec = sts["spec"]["template"]["spec"]
    c = pod_spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    grpc, peer, metrics = ports["grpc"], ports["peer"], ports["metrics"]
    headless = sts["spec"]["serviceName"]
    readiness = c["readinessProbe"]
    check("exec" in readiness, "chart: the default readiness probe is not an exec probe (TLS on by default)")
    sec, pod_sec = c["securityContext"], pod_spec["securityContext"]
    chart_mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    chart_volumes = {v["name"]: v for v in pod_spec["volumes"]}

    services = compose["services"]
    pods = sorted(n for n in services if re.fullmatch(rf"{RELEASE}-\d+", n))
    initial = [n for n in pods if "profiles" not in services[n]]
    check(
        initial == [f"{RELEASE}-{i}" for i in range(values["replicas"])],
        f"compose starts {initial}, the chart {values['replicas']} replicas",
    )
    check(len(pods) <= GEN_SECRETS_PODS, f"compose has {len(pods)} pods, gen-secrets.sh writes {GEN_SECRETS_PODS}")

    for name in pods:
        svc = services[name]
        where = f"compose service {name}"
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        # The chart's environment for this pod, as the kubelet would give it.
        want_env = {}
        for e in c["env"]:
            if "valueFrom" in e:
                field = e["valueFrom"].get("fieldRef", {}).get("fieldPath")
                value = {"metadata.name": name, "metadata.namespace": NAMESPACE}.get(field, f"<{e['valueFrom']}>")
            else:
                value = re.sub(r"\$\((\w+)\)", lambda m: want_env.get(m.group(1), m.group(0)), str(e["value"]))
            want_env[e["name"]] = value
        for k in sorted(set(env) | set(want_env)):
            check(env.get(k) == want_env.get(k), f"{where}: env {k}: compose {env.get(k)!r} != chart {want_env.get(k)!r}")
        check("HOSTNAME" not in env, f"{where}: sets HOSTNAME")
        check(svc.get("hostname") == name, f"{where}: hostname is {svc.get('hostname')!r}")
        dns = f"{name}.{headless}.{NAMESPACE}.svc.{values['clusterDomain']}"
        aliases = (svc.get("networks") or {}).get(RELEASE, {}).get("aliases", [])
        check(dns in aliases, f"{where}: no network alias {dns} (the headless Service name)")
        check(RELEASE in aliases, f"{where}: no network alias {RELEASE} (the client Service name)")

        check(
            sorted(int(p) for p in svc.get("expose", [])) == sorted(ports.values()),
            f"{where}: expose {svc.get('expose')} != the chart's container ports {sorted(ports.values())}",
        )
        published = {int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", [])}
        check(published <= {grpc, metrics}, f"{where}: publishes {published}; only {grpc} and {metrics} (not the peer port)")

        test = svc["healthcheck"]["test"]
        check(test == ["CMD", *readiness["exec"]["command"]], f"{where}: healthcheck {test} != the readiness probe {readiness['exec']['command']}")
        hc = svc["healthcheck"]
        check(hc.get("interval") == f"{readiness['periodSeconds']}s", f"{where}: healthcheck interval != periodSeconds")
        check(hc.get("timeout") == f"{readiness['timeoutSeconds']}s", f"{where}: healthcheck timeout != timeoutSeconds")
        check(hc.get("retries") == readiness["failureThreshold"], f"{where}: healthcheck retries != failureThreshold")

        check(svc.get("user") == f"{pod_sec['runAsUser']}:{pod_sec['runAsGroup']}", f"{where}: user != runAsUser:runAsGroup")
        check(svc.get("read_only") is sec["readOnlyRootFilesystem"], f"{where}: read_only != readOnlyRootFilesystem")
        check(svc.get("cap_drop") == sec["capabilities"]["drop"], f"{where}: cap_drop != capabilities.drop")
        check(
            ("no-new-privileges:true" in (svc.get("security_opt") or [])) == (not sec["allowPrivilegeEscalation"]),
            f"{where}: no-new-privileges != not allowPrivilegeEscalation",
        )
        check(svc.get("command") == c["args"], f"{where}: command != the chart's args {c['args']}")

        mounts = {t: (s, ro) for s, t, ro in map(parse_volume, svc.get("volumes", []))}
        check(mounts.get("/var/lib/raftlite", ("",))[0] == f"data-{name}", f"{where}: no own volume at /var/lib/raftlite")
        check("/tmp" in (svc.get("tmpfs") or []) and "/tmp" in chart_mounts, f"{where}: /tmp is not a tmpfs (the chart's emptyDir)")
        for path, m in chart_mounts.items():
            vol = chart_volumes.get(m["name"])
            if vol is None or "emptyDir" in vol:  # data (volumeClaimTemplate), tmp
                continue
            if "configMap" in vol:
                want = {path: "./raftlite.yaml"}
            elif "secret" in vol and vol["secret"].get("items") and path not in mounts:
                # The chart mounts chosen keys of a Secret: compose mounts those files (or the
                # directory, as for auth.yaml).
                want = {f"{path}/{i['path']}": f"{SECRETS}{path.removeprefix('/etc/raftlite')}/{i['path']}" for i in vol["secret"]["items"]}
            else:
                want = {path: f"{SECRETS}{path.removeprefix('/etc/raftlite')}"}
            for target, source in want.items():
                got = mounts.get(target)
                check(got is not None, f"{where}: nothing mounted at {target} (the chart's volume {m['name']})")
                if got:
                    check(got == (source, True), f"{where}: {target} mounted from {got[0]!r} (ro={got[1]}), want {source!r} read-only")
        check(
            mounts.get(env.get("RAFTLITE_CONFIG", "?")) == ("./raftlite.yaml", True),
            f"{where}: the config file is not mounted read-only at RAFTLITE_CONFIG",
        )

    # The ctl service: what the scale-down hook Job gets (client address, CA, admin token).
    hook = rendered.one("Job", f"{RELEASE}-retain")["spec"]["template"]["spec"]["containers"][0]
    ctl = services["ctl"]
    ctl_env = {k: str(v) for k, v in (ctl.get("environment") or {}).items()}
    hook_env = {e["name"]: e["value"] for e in hook.get("env", [])}
    hook_env["RAFTLITE_ADDR"] = hook["args"][hook["args"].index("--addr") + 1]
    check(ctl_env == hook_env, f"compose ctl: env {ctl_env} != the scale-down hook's {hook_env}")
    ctl_mounts = {t: (s, ro) for s, t, ro in map(parse_volume, ctl.get("volumes", []))}
    for var in ("RAFTLITE_TLS_CA", "RAFTLITE_TOKEN_FILE"):
        path = hook_env.get(var)
        if path:
            check(path in ctl_mounts and ctl_mounts[path][1], f"compose ctl: {var} {path} is not mounted read-only")

    chart_config = yaml.safe_load(rendered.one("ConfigMap", RELEASE)["data"]["raftlite.yaml"])
    compose_config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    for key in sorted(set(chart_config) | set(compose_config)):
        if key in CONFIG_MAY_DIFFER:
            continue
        check(
            chart_config.get(key) == compose_config.get(key),
            f"config {key}: chart {chart_config.get(key)!r} != compose {compose_config.get(key)!r}",
        )
    check(chart_config["listen"].endswith(f":{grpc}"), "config listen is not the grpc port")
    check(chart_config["peer_listen"].endswith(f":{peer}"), "config peer_listen is not the peer port")
    check(chart_config["peers_from_statefulset"].endswith(f":{peer}"), "config peers_from_statefulset is not on the peer port")
    check(chart_config["metrics_addr"].endswith(f":{metrics}"), "config metrics_addr is not the metrics port")

    notes = check_gen_secrets(rendered, check)

    if problems:
        print("compose and chart disagree:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print(
        f"ok: compose mirrors the chart ({len(pods)} pods, env {sorted(want_env)}, "
        f"ports {grpc}/{peer}/{metrics}, healthcheck {readiness['exec']['command'][1:]}){notes}"
    )
    return 0


def check_gen_secrets(rendered, check):
    """Run docker/gen-secrets.sh into a temporary directory; compare with the chart."""
    openssl = shutil.which("openssl")
    if not openssl:
        return "; gen-secrets.sh NOT checked (no openssl)"
    want_sans = rendered.probes["sans"]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["bash", str(GEN_SECRETS), tmp], capture_output=True, text=True)
        if not check(out.returncode == 0, f"gen-secrets.sh failed: {out.stderr.strip()}"):
            return ""
        d = Path(tmp)
        for i in range(GEN_SECRETS_PODS):
            cert = d / "tls" / f"{RELEASE}-{i}.crt"
            for purpose in ("sslserver", "sslclient"):
                r = subprocess.run([openssl, "verify", "-purpose", purpose, "-CAfile", d / "tls" / "ca.crt", cert], capture_output=True, text=True)
                check(r.returncode == 0, f"gen-secrets.sh: {cert.name} does not verify as {purpose}: {r.stdout}{r.stderr}")
            text = subprocess.run([openssl, "x509", "-noout", "-ext", "subjectAltName", "-in", cert], capture_output=True, text=True).stdout
            names = [n.strip() for n in " ".join(text.splitlines()[1:]).split(",") if n.strip()]
            dns = [n.removeprefix("DNS:") for n in names if n.startswith("DNS:")]
            ips = [n.removeprefix("IP Address:") for n in names if n.startswith("IP Address:")]
            check(dns == want_sans[i], f"gen-secrets.sh: {cert.name} DNS SANs {dns} != the chart's {want_sans[i]}")
            check(ips == ["127.0.0.1"], f"gen-secrets.sh: {cert.name} IP SANs {ips} != ['127.0.0.1']")
        tokens = {n: (d / "tokens" / n).read_text() for n in ("admin", "app")}
        auth = yaml.safe_load((d / "auth" / "auth.yaml").read_text())
        chart_auth = yaml.safe_load(base64.b64decode(rendered.one("Secret", f"{RELEASE}-tokens")["data"]["auth.yaml"]))
        check(
            [(t["name"], t["role"]) for t in auth["tokens"]] == [(t["name"], t["role"]) for t in chart_auth["tokens"]],
            f"gen-secrets.sh: auth.yaml tokens {auth['tokens']} != the chart's names/roles",
        )
        for t in auth["tokens"]:
            check(
                t["sha256"] == hashlib.sha256(tokens[t["name"]].encode()).hexdigest(),
                f"gen-secrets.sh: auth.yaml's hash of {t['name']} is not the token file's",
            )
    return "; gen-secrets.sh writes the chart's SANs and tokens"


if __name__ == "__main__":
    sys.exit(main())
