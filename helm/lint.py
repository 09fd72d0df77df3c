#!/usr/bin/env python3
"""Lint the raftlite Helm chart with the real Helm library (the `helm-sdkpy` package), and check
what it renders.

Helm's lint renders every template and checks the result, Chart.yaml and values.schema.json.
It runs on the default values and on variants (TLS off, cert-manager, tokens off or from an
existing Secret, no NetworkPolicy, archive, ServiceMonitor, 5 replicas without hook, ...), each
linted as a copy of the chart whose values.yaml has the overrides merged in.

helm-sdkpy cannot `helm template` (no client-side dry run), but its lint renders, and
helm/render.py gets the rendered files out of it (see there). This script then checks the
objects: the secure defaults (TLS with a chart-made CA, tokens, the NetworkPolicy), the pods'
environment, probes, mounts and Secrets in every variant, the generated certificates (with
`openssl`: signed by the CA, the agreed SANs) and token hashes, and the keep-on-upgrade logic
(the helpers fed made-up `lookup` results).

    python3 helm/lint.py        # exit 0: clean; 1: problems; 2: helm-sdkpy missing

Install the library with `pip install --ignore-requires-python helm-sdkpy` (.ci/run does).
"""

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render  # noqa: E402

CHART = render.CHART
SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
RELEASE = "test-release"  # the release name of Helm's lint
TLS_DIR, AUTH_FILE, ADMIN_TOKEN = "/etc/raftlite/tls", "/etc/raftlite/auth/auth.yaml", "/etc/raftlite/tokens/admin"

VARIANTS = {
    "defaults": {},
    "tls-off": {"tls": {"enabled": False}},
    "cert-manager-self-signed": {"tls": {"certManager": {"enabled": True}}},
    "cert-manager-issuer+fullname+5": {
        "replicas": 5,
        "fullnameOverride": "db",
        "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}},
        "networkPolicy": {
            "clients": {
                "podSelector": {"matchLabels": {"app": "shop"}},
                "namespaceSelector": {"matchLabels": {"team": "shop"}},
            }
        },
    },
    "auth-off": {"auth": {"enabled": False}},
    "auth-existing-secret": {"auth": {"existingSecret": "my-raftlite-tokens"}},
    "networkpolicy-off": {"networkPolicy": {"enabled": False}},
    "insecure-all-off": {"tls": {"enabled": False}, "auth": {"enabled": False}, "networkPolicy": {"enabled": False}},
    "archive+secret": {
        "archive": {
            "url": "s3://bucket/raftlite",
            "endpoint": "http://minio:9000",
            "region": "us-east-1",
            "credentials": {"existingSecret": "raftlite-s3"},
        }
    },
    "servicemonitor+hard-affinity": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "antiAffinity": "hard",
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
    },
    "five-no-hook-no-pdb+ports": {
        "replicas": 5,
        "ports": {"grpc": 8000, "peer": 8100, "metrics": 9100},
        "scaleDownHook": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
        "antiAffinity": "none",
        "persistence": {"storageClassName": "fast"},
    },
}

# Helper checks: the keep-on-upgrade logic, fed made-up `lookup` results (Secret data is base64).
HELPER_PROBES = {
    # An existing CA, pod 0's certificate and a spare one (pod 7): all kept, pods 1-2 added.
    "tls-reuse": """
{{- $f := include "raftlite.fullname" . }}
{{- $ca := genCA "old-ca" 30 }}
{{- $c0 := genSignedCert "old-0" nil nil 30 $ca }}
{{- $oldCa := dict "tls.crt" ($ca.Cert | b64enc) "tls.key" ($ca.Key | b64enc) }}
{{- $old := dict "ca.crt" ($ca.Cert | b64enc) (printf "%s-0.crt" $f) ($c0.Cert | b64enc) (printf "%s-0.key" $f) ($c0.Key | b64enc) (printf "%s-7.crt" $f) "c3BhcmU=" (printf "%s-7.key" $f) "c3BhcmU=" }}
{{- $out := dict "old" $old "oldCa" $oldCa "new" (include "raftlite.tlsData" (dict "root" . "old" $old "oldCa" $oldCa) | fromYaml) }}""",
    # The CA Secret is gone: a new CA, every certificate made again.
    "tls-no-ca": """
{{- $f := include "raftlite.fullname" . }}
{{- $ca := genCA "old-ca" 30 }}
{{- $c0 := genSignedCert "old-0" nil nil 30 $ca }}
{{- $old := dict "ca.crt" ($ca.Cert | b64enc) (printf "%s-0.crt" $f) ($c0.Cert | b64enc) (printf "%s-0.key" $f) ($c0.Key | b64enc) }}
{{- $out := dict "old" $old "new" (include "raftlite.tlsData" (dict "root" . "old" $old "oldCa" dict) | fromYaml) }}""",
    # The certificates Secret holds another CA's certificates: the CA is kept, they are made again.
    "tls-other-ca": """
{{- $f := include "raftlite.fullname" . }}
{{- $ca := genCA "old-ca" 30 }}
{{- $other := genCA "other-ca" 30 }}
{{- $c0 := genSignedCert "old-0" nil nil 30 $other }}
{{- $oldCa := dict "tls.crt" ($ca.Cert | b64enc) "tls.key" ($ca.Key | b64enc) }}
{{- $old := dict "ca.crt" ($other.Cert | b64enc) (printf "%s-0.crt" $f) ($c0.Cert | b64enc) (printf "%s-0.key" $f) ($c0.Key | b64enc) }}
{{- $out := dict "old" $old "oldCa" $oldCa "new" (include "raftlite.tlsData" (dict "root" . "old" $old "oldCa" $oldCa) | fromYaml) }}""",
    "tokens-reuse": """
{{- $old := dict "admin" ("old-admin-token" | b64enc) "app" ("old-app-token" | b64enc) "auth.yaml" ("stale" | b64enc) }}
{{- $out := include "raftlite.tokensData" (dict "old" $old) | fromYaml }}""",
}


def b64(text):
    return base64.b64decode(text).decode()


# ---------------------------------------------------------------------------------------------
# Certificates, with the openssl command.


class Openssl:
    def __init__(self):
        self.bin = shutil.which("openssl")
        self.tmp = Path(tempfile.mkdtemp(prefix="raftlite-lint-"))
        self.n = 0

    def _file(self, pem):
        self.n += 1
        path = self.tmp / f"{self.n}.pem"
        path.write_text(pem)
        return path

    def _run(self, *args):
        return subprocess.run([self.bin, *map(str, args)], capture_output=True, text=True)

    def sans(self, cert_pem):
        out = self._run("x509", "-noout", "-ext", "subjectAltName", "-in", self._file(cert_pem)).stdout
        names = [n.strip() for n in " ".join(out.splitlines()[1:]).split(",") if n.strip()]
        dns = [n.removeprefix("DNS:") for n in names if n.startswith("DNS:")]
        ips = [n.removeprefix("IP Address:") for n in names if n.startswith("IP Address:")]
        return dns, ips

    def verify(self, ca_pem, cert_pem, purpose):
        r = self._run("verify", "-purpose", purpose, "-CAfile", self._file(ca_pem), self._file(cert_pem))
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def key_matches(self, cert_pem, key_pem):
        a = self._run("x509", "-noout", "-pubkey", "-in", self._file(cert_pem)).stdout
        b = self._run("pkey", "-pubout", "-in", self._file(key_pem)).stdout
        return bool(a) and a == b

    def cleanup(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


def expected_sans(fullname, ordinal, namespace, domain):
    pod = f"{fullname}-{ordinal}.{fullname}-headless"
    names = [f"raftlite-node-{ordinal + 1}"]
    for name in (pod, fullname):
        names += [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{domain}"]
    return names + ["localhost"]


def san_diff(got, want):
    return f"missing {sorted(set(want) - set(got))}, unexpected {sorted(set(got) - set(want))}" if set(got) != set(want) else f"order {got}"


# ---------------------------------------------------------------------------------------------
# Checks of one variant's rendering.


class Checker:
    def __init__(self, name, values, rendered, ssl):
        self.name, self.v, self.r, self.ssl = name, values, rendered, ssl
        self.problems = []

    def check(self, cond, message):
        if not cond:
            self.problems.append(message)
        return cond

    def run(self):
        try:
            self.check_all()
        except (AssertionError, KeyError, IndexError, TypeError, ValueError) as e:
            self.problems.append(f"checks stopped: {type(e).__name__}: {e}")
        return self.problems

    def check_all(self):
        v, r = self.v, self.r
        for message in r.fails:
            self.problems.append(f"template fail/required: {message}")
        sts = r.one("StatefulSet")
        f = self.fullname = sts["metadata"]["name"]
        if v.get("fullnameOverride"):
            self.check(f == v["fullnameOverride"], f"StatefulSet {f}, not fullnameOverride {v['fullnameOverride']}")
        ports = v["ports"]
        pod = sts["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.container, self.pod = c, pod
        self.check(
            {p["name"]: p["containerPort"] for p in c["ports"]}
            == {"grpc": ports["grpc"], "peer": ports["peer"], "metrics": ports["metrics"]},
            f"container ports {c['ports']}",
        )
        headless = r.one("Service", f"{f}-headless")
        self.check(
            {p["name"]: p["port"] for p in headless["spec"]["ports"]}
            == {"grpc": ports["grpc"], "peer": ports["peer"], "metrics": ports["metrics"]},
            "headless Service ports are not grpc, peer, metrics",
        )
        client = r.one("Service", f)
        self.check(
            [(p["name"], p["port"]) for p in client["spec"]["ports"]] == [("grpc", ports["grpc"])],
            "the client Service must expose the client port only",
        )
        config = yaml.safe_load(r.one("ConfigMap", f)["data"]["raftlite.yaml"])
        self.check(config["listen"] == f"0.0.0.0:{ports['grpc']}", f"config listen {config['listen']}")
        self.check(config["peer_listen"] == f"0.0.0.0:{ports['peer']}", f"config peer_listen {config.get('peer_listen')}")
        pattern = f"{f}.{f}-headless.${{POD_NAMESPACE}}.svc.{v['clusterDomain']}:{ports['peer']}"
        self.check(config["peers_from_statefulset"] == pattern, f"peers_from_statefulset {config['peers_from_statefulset']} != {pattern}")

        self.check_env()
        self.check_volumes(pod, c)
        self.check_probes(c)
        self.check_tls()
        self.check_auth()
        self.check_hook()
        self.check_network_policy()
        self.check_notes()

    def env(self, container=None):
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in (container or self.container)["env"]}

    def check_env(self):
        v, env = self.v, self.env()
        names = [e["name"] for e in self.container["env"]]
        self.check(names[:2] == ["POD_NAME", "POD_NAMESPACE"], f"env starts {names[:2]}, not POD_NAME, POD_NAMESPACE")
        for i, e in enumerate(self.container["env"]):
            for ref in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                self.check(ref in names[:i], f"env {e['name']} uses $({ref}) before it is defined")
        tls, auth = v["tls"]["enabled"], v["auth"]["enabled"]
        scheme = "https://" if tls else ""
        self.check(env.get("RAFTLITE_ADDR") == f"{scheme}localhost:{v['ports']['grpc']}", f"RAFTLITE_ADDR {env.get('RAFTLITE_ADDR')}")
        want_tls = {
            "RAFTLITE_TLS_CERT": f"{TLS_DIR}/$(POD_NAME).crt",
            "RAFTLITE_TLS_KEY": f"{TLS_DIR}/$(POD_NAME).key",
            "RAFTLITE_TLS_CA": f"{TLS_DIR}/ca.crt",
        }
        for k, want in want_tls.items():
            self.check(env.get(k) == (want if tls else None), f"{k} = {env.get(k)!r} with tls.enabled={tls}")
        self.check(env.get("RAFTLITE_AUTH_FILE") == (AUTH_FILE if auth else None), f"RAFTLITE_AUTH_FILE {env.get('RAFTLITE_AUTH_FILE')!r}")
        self.check(env.get("RAFTLITE_TOKEN_FILE") == (ADMIN_TOKEN if auth else None), f"RAFTLITE_TOKEN_FILE {env.get('RAFTLITE_TOKEN_FILE')!r}")
        insecure = None if (tls and auth) else "true"
        self.check(env.get("RAFTLITE_INSECURE") == insecure, f"RAFTLITE_INSECURE {env.get('RAFTLITE_INSECURE')!r} (tls {tls}, auth {auth})")

    def secret_volume(self, volume):
        """The Secret names and (key, path) items a volume projects (or None: not a Secret)."""
        if "secret" in volume:
            s = volume["secret"]
            return [(s["secretName"], [(i["key"], i["path"]) for i in s.get("items", [])] or None)]
        if "projected" in volume:
            return [
                (src["secret"]["name"], [(i["key"], i["path"]) for i in src["secret"].get("items", [])] or None)
                for src in volume["projected"]["sources"]
            ]
        return None

    def known_secrets(self):
        """Secrets the chart renders, or that the values say exist (cert-manager's, existingSecret)."""
        names = {o["metadata"]["name"] for o in self.r.find("Secret")}
        names |= {o["spec"]["secretName"] for o in self.r.find("Certificate")}
        if self.v["auth"]["existingSecret"]:
            names.add(self.v["auth"]["existingSecret"])
        if self.v["archive"]["credentials"]["existingSecret"]:
            names.add(self.v["archive"]["credentials"]["existingSecret"])
        return names

    def check_volumes(self, pod, c, where="StatefulSet"):
        volumes = {vol["name"]: vol for vol in pod.get("volumes", [])}
        claims = {"data"} if where == "StatefulSet" else set()
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        for name in mounts:
            self.check(name in volumes or name in claims, f"{where}: mount {name} has no volume")
        known = self.known_secrets()
        for vol in volumes.values():
            for secret, _ in self.secret_volume(vol) or []:
                self.check(secret in known, f"{where}: volume {vol['name']} uses Secret {secret}, which nothing makes")
        return volumes, mounts

    def check_probes(self, c):
        v = self.v
        for kind in ("readiness", "liveness"):
            probe, want = c[f"{kind}Probe"], v["probes"][kind]
            for key in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"):
                if key in want:
                    self.check(probe.get(key) == want[key], f"{kind} probe {key} {probe.get(key)} != {want[key]}")
            if v["tls"]["enabled"]:
                self.check(
                    probe.get("exec", {}).get("command") == ["/usr/local/bin/raftlite", "health", "--service", want["service"]],
                    f"{kind} probe with TLS is not `raftlite health --service {want['service']!r}`: {probe}",
                )
            else:
                self.check(
                    probe.get("grpc") == {"port": v["ports"]["grpc"], "service": want["service"]},
                    f"{kind} probe without TLS is not the gRPC probe on the client port: {probe}",
                )

    def check_tls(self):
        v, r, f = self.v, self.r, self.fullname
        replicas = v["replicas"]
        volumes = {vol["name"]: vol for vol in self.pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        if not v["tls"]["enabled"]:
            self.check("tls" not in volumes and not r.find("Certificate") and not r.find("Secret", f"{f}-tls"), "TLS off, yet TLS objects")
            return
        self.check(mounts.get("tls") == TLS_DIR, f"the tls volume is not mounted at {TLS_DIR}")
        want_paths = {"ca.crt"} | {f"{f}-{i}.{ext}" for i in range(replicas) for ext in ("crt", "key")}
        ns, domain = "", v["clusterDomain"]  # lint renders with an empty namespace
        if v["tls"]["certManager"]["enabled"]:
            self.check(not r.find("Secret", f"{f}-tls"), "cert-manager on, yet the chart makes certificates")
            certs = {c["metadata"]["name"]: c for c in r.find("Certificate")}
            issuer = v["tls"]["certManager"]["issuerRef"]
            if issuer.get("name"):
                self.check(not r.find("Issuer"), "an issuerRef is given, yet the chart makes Issuers")
            else:
                self.check(r.one("Issuer", f"{f}-selfsigned")["spec"] == {"selfSigned": {}}, "no self-signed Issuer")
                self.check(r.one("Issuer", f"{f}-ca")["spec"] == {"ca": {"secretName": f"{f}-ca"}}, "no CA Issuer")
                self.check(certs[f"{f}-ca"]["spec"].get("isCA") is True, "the CA Certificate is not isCA")
                issuer = {"name": f"{f}-ca", "kind": "Issuer", "group": "cert-manager.io"}
            for i in range(replicas):
                spec = certs[f"{f}-{i}"]["spec"]
                self.check(spec["secretName"] == f"{f}-{i}-tls", f"Certificate {f}-{i} secretName {spec['secretName']}")
                want = expected_sans(f, i, ns, domain)
                self.check(spec["dnsNames"] == want, f"Certificate {f}-{i} dnsNames: {san_diff(spec['dnsNames'], want)}")
                self.check(spec["ipAddresses"] == ["127.0.0.1"], f"Certificate {f}-{i} ipAddresses")
                self.check({"server auth", "client auth"} <= set(spec["usages"]), f"Certificate {f}-{i} usages")
                self.check(spec["issuerRef"] == issuer, f"Certificate {f}-{i} issuerRef {spec['issuerRef']} != {issuer}")
            paths = {p for _, items in self.secret_volume(volumes["tls"]) for _, p in items}
            self.check(paths == want_paths, f"projected tls volume paths {sorted(paths)} != {sorted(want_paths)}")
            return
        self.check(not r.find("Certificate") and not r.find("Issuer"), "cert-manager off, yet Certificates")
        self.check(volumes["tls"]["secret"]["secretName"] == f"{f}-tls", "the tls volume is not Secret <fullname>-tls")
        data = r.one("Secret", f"{f}-tls")["data"]
        self.check(set(data) == want_paths, f"Secret {f}-tls keys {sorted(data)} != {sorted(want_paths)}")
        ca = r.one("Secret", f"{f}-ca")
        self.check(ca["type"] == "kubernetes.io/tls" and set(ca["data"]) == {"tls.crt", "tls.key"}, "Secret <fullname>-ca")
        self.check(ca["data"]["tls.crt"] == data["ca.crt"], "ca.crt is not the CA Secret's certificate")
        self.check(not any(self.secret_volume(vol) and any(s == f"{f}-ca" for s, _ in self.secret_volume(vol)) for vol in volumes.values()), "the CA key is mounted")
        if not self.ssl.bin:
            return
        ca_pem = b64(data["ca.crt"])
        self.check(self.ssl.key_matches(ca_pem, b64(ca["data"]["tls.key"])), "the CA key does not match ca.crt")
        for i in range(replicas):
            self.check_pod_cert(ca_pem, b64(data[f"{f}-{i}.crt"]), b64(data[f"{f}-{i}.key"]), expected_sans(f, i, ns, domain), f"{f}-{i}")

    def check_pod_cert(self, ca_pem, cert, key, want_dns, what):
        for purpose in ("sslserver", "sslclient"):
            ok, out = self.ssl.verify(ca_pem, cert, purpose)
            self.check(ok, f"{what}.crt does not verify against ca.crt as {purpose}: {out}")
        dns, ips = self.ssl.sans(cert)
        self.check(sorted(dns) == sorted(want_dns), f"{what}.crt DNS SANs: {san_diff(dns, want_dns)}")
        self.check(ips == ["127.0.0.1"], f"{what}.crt IP SANs {ips}")
        self.check(self.ssl.key_matches(cert, key), f"{what}.key does not match {what}.crt")

    def check_auth(self):
        v, r, f = self.v, self.r, self.fullname
        volumes = {vol["name"]: vol for vol in self.pod["volumes"]}
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        if not v["auth"]["enabled"]:
            self.check(not r.find("Secret", f"{f}-tokens") and "auth" not in volumes and "tokens" not in volumes, "auth off, yet tokens")
            return
        secret = v["auth"]["existingSecret"] or f"{f}-tokens"
        self.check(self.secret_volume(volumes["auth"]) == [(secret, [("auth.yaml", "auth.yaml")])], "auth volume")
        self.check(self.secret_volume(volumes["tokens"]) == [(secret, [("admin", "admin")])], "tokens volume: only the admin token")
        self.check(mounts.get("auth") + "/auth.yaml" == AUTH_FILE, "auth.yaml mount")
        self.check(mounts.get("tokens") + "/admin" == ADMIN_TOKEN, "admin token mount")
        if v["auth"]["existingSecret"]:
            self.check(not r.find("Secret", f"{f}-tokens"), "existingSecret given, yet the chart makes tokens")
            return
        self.check_tokens(r.one("Secret", f"{f}-tokens")["data"])

    def check_tokens(self, data, want=None):
        self.check(set(data) == {"admin", "app", "auth.yaml"}, f"tokens Secret keys {sorted(data)}")
        tokens = {k: b64(data[k]) for k in ("admin", "app")}
        for k, t in tokens.items():
            self.check(len(t) >= 32 and t.isalnum() if want is None else t == want[k], f"token {k} {t!r}")
        auth = yaml.safe_load(b64(data["auth.yaml"]))
        want_auth = [
            {"name": "admin", "sha256": hashlib.sha256(tokens["admin"].encode()).hexdigest(), "role": "admin"},
            {"name": "app", "sha256": hashlib.sha256(tokens["app"].encode()).hexdigest(), "role": "write"},
        ]
        self.check(auth == {"tokens": want_auth}, f"auth.yaml {auth} != {want_auth}")

    def check_hook(self):
        v, r, f = self.v, self.r, self.fullname
        jobs = r.find("Job")
        if not v["scaleDownHook"]["enabled"]:
            self.check(not jobs, "hook disabled, yet a Job")
            return
        job = r.one("Job", f"{f}-retain")
        pod = job["spec"]["template"]
        selector = r.one("StatefulSet")["spec"]["selector"]["matchLabels"]
        self.check(
            not all(pod["metadata"]["labels"].get(k) == val for k, val in selector.items()),
            "the hook pod carries the raftlite pods' selector labels",
        )
        c = pod["spec"]["containers"][0]
        scheme = "https://" if v["tls"]["enabled"] else ""
        self.check(
            c["args"] == ["cluster", "--addr", f"{scheme}{f}:{v['ports']['grpc']}", "retain", str(v["replicas"])],
            f"hook args {c['args']}",
        )
        env = self.env(c) if c.get("env") else {}
        want = {}
        if v["tls"]["enabled"]:
            want["RAFTLITE_TLS_CA"] = f"{TLS_DIR}/ca.crt"
        if v["auth"]["enabled"]:
            want["RAFTLITE_TOKEN_FILE"] = ADMIN_TOKEN
        self.check(env == want, f"hook env {env} != {want}")
        volumes, mounts = self.check_volumes(pod["spec"], c, "hook Job")
        self.check(set(mounts) == {"tls", "tokens"} & {"tls" if v["tls"]["enabled"] else None, "tokens" if v["auth"]["enabled"] else None}, f"hook mounts {sorted(mounts)}")
        if "tls" in volumes:
            paths = {p for _, items in self.secret_volume(volumes["tls"]) for _, p in items or []}
            self.check(paths == {"ca.crt"}, f"the hook gets {sorted(paths)} from the tls Secret, not only ca.crt")

    def check_network_policy(self):
        v, r, f = self.v, self.r, self.fullname
        if not v["networkPolicy"]["enabled"]:
            self.check(not r.find("NetworkPolicy"), "networkPolicy disabled, yet a NetworkPolicy")
            return
        np = r.one("NetworkPolicy", f)["spec"]
        selector = r.one("StatefulSet")["spec"]["selector"]["matchLabels"]
        ports = v["ports"]
        self.check(np["podSelector"] == {"matchLabels": selector} and np["policyTypes"] == ["Ingress"], "NetworkPolicy podSelector/policyTypes")
        rules = {rule["ports"][0]["port"]: rule["from"] for rule in np["ingress"]}
        self.check(sorted(rules) == sorted(ports.values()), f"NetworkPolicy ports {sorted(rules)}")
        own = {"podSelector": {"matchLabels": selector}}
        self.check(rules[ports["peer"]] == [own], f"peer port open to {rules[ports['peer']]}, not only the raftlite pods")
        clients = {"podSelector": v["networkPolicy"]["clients"]["podSelector"]}
        if v["networkPolicy"]["clients"]["namespaceSelector"]:
            clients["namespaceSelector"] = v["networkPolicy"]["clients"]["namespaceSelector"]
        hook = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "scale-down"}}}
        self.check(rules[ports["grpc"]] == [clients, own, hook], f"client port rule {rules[ports['grpc']]}")
        self.check(
            rules[ports["metrics"]] == [{"namespaceSelector": v["networkPolicy"]["metrics"]["namespaceSelector"]}],
            f"metrics rule {rules[ports['metrics']]}",
        )

    def check_notes(self):
        v, notes, f = self.v, self.r.files["NOTES.txt"], self.fullname
        if v["auth"]["enabled"]:
            secret = v["auth"]["existingSecret"] or f"{f}-tokens"
            self.check(f"get secret {secret} -o jsonpath='{{.data.app}}' | base64 -d" in notes, "NOTES: how to read the app token")
        if v["tls"]["enabled"]:
            secret = f"{f}-0-tls" if v["tls"]["certManager"]["enabled"] else f"{f}-tls"
            self.check(f"get secret {secret} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d" in notes, "NOTES: how to read the CA")
        self.check(("WARNING" in notes) == (not (v["tls"]["enabled"] and v["auth"]["enabled"])), "NOTES: insecure warning")


def check_secure_defaults(defaults, rendered):
    """The chart's defaults: TLS (chart-made CA), tokens and the NetworkPolicy, no insecure mode."""
    problems = []
    for key in ("tls", "auth", "networkPolicy"):
        if defaults[key]["enabled"] is not True:
            problems.append(f"values.yaml: {key}.enabled is not true by default")
    if defaults["tls"]["certManager"]["enabled"]:
        problems.append("values.yaml: tls.certManager.enabled must be false by default (no CRDs needed)")
    names = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects()}
    f = rendered.one("StatefulSet")["metadata"]["name"]
    for want in [("Secret", f"{f}-tls"), ("Secret", f"{f}-ca"), ("Secret", f"{f}-tokens"), ("NetworkPolicy", f)]:
        if want not in names:
            problems.append(f"defaults render no {want[0]} {want[1]}")
    return problems


def check_helpers(rendered, checker):
    """The keep-on-upgrade logic of raftlite.tlsData and raftlite.tokensData."""
    p, f, ssl = rendered.probes, checker.fullname, checker.ssl
    v = checker.v
    pods = {f"{f}-{i}.{ext}" for i in range(v["replicas"]) for ext in ("crt", "key")}
    reuse = p["tls-reuse"]
    new, old = reuse["new"]["tls"], reuse["old"]
    checker.check(reuse["new"]["ca"] == reuse["oldCa"], "tls-reuse: the existing CA was not kept")
    for key in ("ca.crt", f"{f}-0.crt", f"{f}-0.key", f"{f}-7.crt", f"{f}-7.key"):
        checker.check(new.get(key) == old[key], f"tls-reuse: existing {key} not kept")
    checker.check(set(new) == pods | {"ca.crt", f"{f}-7.crt", f"{f}-7.key"}, f"tls-reuse: keys {sorted(new)}")
    if ssl.bin:
        ca = b64(old["ca.crt"])
        for i in range(1, v["replicas"]):
            checker.check_pod_cert(ca, b64(new[f"{f}-{i}.crt"]), b64(new[f"{f}-{i}.key"]), expected_sans(f, i, "", v["clusterDomain"]), f"tls-reuse {f}-{i}")
    no_ca = p["tls-no-ca"]
    checker.check(no_ca["new"]["tls"]["ca.crt"] != no_ca["old"]["ca.crt"], "tls-no-ca: the old ca.crt was kept without its key")
    checker.check(no_ca["new"]["tls"][f"{f}-0.crt"] != no_ca["old"][f"{f}-0.crt"], "tls-no-ca: pod 0's old certificate was kept")
    checker.check(no_ca["new"]["ca"]["tls.crt"] == no_ca["new"]["tls"]["ca.crt"], "tls-no-ca: ca.crt is not the new CA")
    other = p["tls-other-ca"]
    checker.check(other["new"]["ca"] == other["oldCa"], "tls-other-ca: the CA was not kept")
    checker.check(other["new"]["tls"]["ca.crt"] == other["oldCa"]["tls.crt"], "tls-other-ca: ca.crt is not the CA")
    checker.check(other["new"]["tls"][f"{f}-0.crt"] != other["old"][f"{f}-0.crt"], "tls-other-ca: another CA's certificate was kept")
    checker.check_tokens(p["tokens-reuse"], want={"admin": "old-admin-token", "app": "old-app-token"})


def main():
    render.import_helm()
    defaults = render.default_values()
    ssl = Openssl()
    if not ssl.bin:
        print("note: no `openssl` command: the generated certificates are not verified")
    failed = False
    try:
        for name, overrides in VARIANTS.items():
            values = render.merge(defaults, overrides)
            rendered = render.render(values, probes=HELPER_PROBES if name == "defaults" else None)
            result = rendered.lint
            problems = [
                f"{SEVERITY.get(m.get('Severity'), '?')} {m.get('Path')}: "
                f"{m.get('Err') or '(helm-sdkpy gives no message text; run `helm lint` for it)'}"
                for m in result.get("Messages") or []
                if m.get("Severity", 0) >= 2
            ]
            if result.get("TotalChartsLinted") != 1:
                problems.append("ERROR .: the chart was not linted")
            if result.get("Errors"):
                problems.append(f"ERROR: {result['Errors']}")
            if problems:
                problems += [f"schema: {p}" for p in schema_problems(values)]
            else:
                checker = Checker(name, values, rendered, ssl)
                checker.run()
                if name == "defaults":
                    checker.problems += check_secure_defaults(defaults, rendered)
                    try:
                        check_helpers(rendered, checker)
                    except (AssertionError, KeyError, TypeError) as e:
                        checker.problems.append(f"helper checks stopped: {type(e).__name__}: {e}")
                problems += checker.problems
            if problems:
                failed = True
                print(f"FAIL {name}:")
                for p in problems:
                    print(f"  {p}")
            else:
                print(f"ok   {name}")
    finally:
        ssl.cleanup()
    return 1 if failed else 0


def schema_problems(values):
    """Readable schema errors (helm-sdkpy reports that lint failed, not why)."""
    try:
        import jsonschema
    except ImportError:
        return []
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"values{''.join(f'[{p!r}]' for p in e.path)}: {e.message}" for e in validator.iter_errors(values)]


if __name__ == "__main__":
    sys.exit(main())
