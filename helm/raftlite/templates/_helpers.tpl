{{- define "raftlite.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The StatefulSet's name; pod names are FULLNAME-ORDINAL, so keep room for the ordinal. */}}
{{- define "raftlite.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else if contains (include "raftlite.name" .) .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "raftlite.name" .) | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "raftlite.headless" -}}
{{- printf "%s-headless" (include "raftlite.fullname" .) }}
{{- end }}

{{- define "raftlite.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raftlite.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "raftlite.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "raftlite.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "raftlite.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The peer pattern NAME.HEADLESS.NAMESPACE.svc.DOMAIN:PEER-PORT: pod i is NAME-i.HEADLESS... .
${POD_NAMESPACE} is expanded by raftlite from the downward API when it reads the file.
*/}}
{{- define "raftlite.peerPattern" -}}
{{- printf "%s.%s.${POD_NAMESPACE}.svc.%s:%d" (include "raftlite.fullname" .) (include "raftlite.headless" .) .Values.clusterDomain (int .Values.ports.peer) }}
{{- end }}

{{/* "true" when the pods run without TLS or without tokens (RAFTLITE_INSECURE). */}}
{{- define "raftlite.insecure" -}}
{{- if not (and .Values.tls.enabled .Values.auth.enabled) }}true{{ end }}
{{- end }}

{{/* A client address of the client port on HOST (.host): https:// when TLS is on. */}}
{{- define "raftlite.clientAddr" -}}
{{- printf "%s%s:%d" (ternary "https://" "" .root.Values.tls.enabled) .host (int .root.Values.ports.grpc) }}
{{- end }}

{{- define "raftlite.tlsSecret" -}}
{{- printf "%s-tls" (include "raftlite.fullname" .) }}
{{- end }}

{{- define "raftlite.tokensSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-tokens" (include "raftlite.fullname" .)) }}
{{- end }}

{{/*
The DNS SANs of pod .ordinal's certificate (a YAML list): its peer identity
raftlite-node-<ordinal+1>, its headless-Service names, the client Service's names, localhost.
docker/gen-secrets.sh writes the same ones for the compose mirror.
*/}}
{{- define "raftlite.certDnsNames" -}}
{{- $root := .root }}
{{- $f := include "raftlite.fullname" $root }}
{{- $pod := printf "%s.%s" (printf "%s-%d" $f (int .ordinal)) (include "raftlite.headless" $root) }}
{{- $ns := $root.Release.Namespace }}
{{- $domain := $root.Values.clusterDomain }}
- raftlite-node-{{ add1 .ordinal }}
{{- range $name := list $pod $f }}
- {{ $name }}
- {{ $name }}.{{ $ns }}
- {{ $name }}.{{ $ns }}.svc
- {{ $name }}.{{ $ns }}.svc.{{ $domain }}
{{- end }}
- localhost
{{- end }}

{{/*
The data of Secrets <fullname>-ca (the CA, never mounted) and <fullname>-tls (ca.crt and each
pod's POD.crt / POD.key), base64-encoded, as YAML {ca: {...}, tls: {...}}.
.old / .oldCa: the data of the Secrets that exist (Helm `lookup`; empty on install). The CA
and every pod certificate it signed are kept; only the missing pods' certificates are made
(e.g. after a scale-up; certificates of pods above `replicas` stay for a later scale-up).
Without the old CA everything is made anew.
*/}}
{{- define "raftlite.tlsData" -}}
{{- $root := .root }}
{{- $fullname := include "raftlite.fullname" $root }}
{{- $days := int $root.Values.tls.validityDays }}
{{- $old := .old | default dict }}
{{- $oldCa := .oldCa | default dict }}
{{- $caCrt := index $oldCa "tls.crt" | default "" }}
{{- $caKey := index $oldCa "tls.key" | default "" }}
{{- $ca := dict }}
{{- $tls := dict }}
{{- if and $caCrt $caKey }}
{{- $ca = buildCustomCert $caCrt $caKey }}
{{- if eq (index $old "ca.crt" | default "") $caCrt }}
{{- $tls = deepCopy $old }}
{{- end }}
{{- else }}
{{- $ca = genCA (printf "%s-ca" $fullname) $days }}
{{- $caCrt = $ca.Cert | b64enc }}
{{- $caKey = $ca.Key | b64enc }}
{{- end }}
{{- $_ := set $tls "ca.crt" $caCrt }}
{{- range $i := until (int $root.Values.replicas) }}
{{- $pod := printf "%s-%d" $fullname $i }}
{{- if not (and (index $tls (printf "%s.crt" $pod)) (index $tls (printf "%s.key" $pod))) }}
{{- $names := include "raftlite.certDnsNames" (dict "root" $root "ordinal" $i) | fromYamlArray }}
{{- $cert := genSignedCert $pod (list "127.0.0.1") $names $days $ca }}
{{- $_ := set $tls (printf "%s.crt" $pod) ($cert.Cert | b64enc) }}
{{- $_ := set $tls (printf "%s.key" $pod) ($cert.Key | b64enc) }}
{{- end }}
{{- end }}
ca:
  tls.crt: {{ $caCrt }}
  tls.key: {{ $caKey }}
tls:
  {{- toYaml $tls | nindent 2 }}
{{- end }}

{{/*
The data of Secret <fullname>-tokens, base64-encoded: the tokens `admin` and `app` (random,
kept from .old, the existing Secret's data) and `auth.yaml` with their SHA-256 hashes.
*/}}
{{- define "raftlite.tokensData" -}}
{{- $old := .old | default dict }}
{{- $admin := index $old "admin" | default "" | b64dec | default (randAlphaNum 48) }}
{{- $app := index $old "app" | default "" | b64dec | default (randAlphaNum 48) }}
{{- $authYaml := printf "# raftlite tokens (SHA-256 of each), made by the Helm chart.\ntokens:\n  - name: admin\n    sha256: %s\n    role: admin\n  - name: app\n    sha256: %s\n    role: write\n" (sha256sum $admin) (sha256sum $app) }}
admin: {{ $admin | b64enc }}
app: {{ $app | b64enc }}
auth.yaml: {{ $authYaml | b64enc }}
{{- end }}

{{/*
The raftlite container's environment; docker/compose.yaml sets the same names and values
(helm/check_compose.py compares them). No HOSTNAME: the pod's own name comes from POD_NAME.
POD_NAME comes first: Kubernetes expands $(POD_NAME) in the values of the later entries.
*/}}
{{- define "raftlite.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RAFTLITE_CONFIG
  value: /etc/raftlite/raftlite.yaml
{{- if .Values.tls.enabled }}
- name: RAFTLITE_TLS_CERT
  value: /etc/raftlite/tls/$(POD_NAME).crt
- name: RAFTLITE_TLS_KEY
  value: /etc/raftlite/tls/$(POD_NAME).key
- name: RAFTLITE_TLS_CA
  value: /etc/raftlite/tls/ca.crt
{{- end }}
{{- if .Values.auth.enabled }}
- name: RAFTLITE_AUTH_FILE
  value: /etc/raftlite/auth/auth.yaml
{{- end }}
{{- if include "raftlite.insecure" . }}
- name: RAFTLITE_INSECURE
  value: "true"
{{- end }}
# For the CLI in the pod (kubectl exec, the exec probes): this node, the CA, the admin token.
- name: RAFTLITE_ADDR
  value: {{ include "raftlite.clientAddr" (dict "root" . "host" "localhost") }}
{{- if .Values.auth.enabled }}
- name: RAFTLITE_TOKEN_FILE
  value: /etc/raftlite/tokens/admin
{{- end }}
{{- with .Values.archive.url }}
- name: RAFTLITE_ARCHIVE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.archive.endpoint }}
- name: RAFTLITE_ARCHIVE_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.archive.region }}
- name: RAFTLITE_ARCHIVE_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.archive.credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.archive.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.archive.credentials.secretAccessKeyKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The config file is mounted by itself (subPath), so that the Secrets' directories beside it
(/etc/raftlite/tls, auth, tokens) are not mounts nested inside the read-only ConfigMap volume.
A ConfigMap change rolls the pods anyway (checksum/config).
*/}}
{{- define "raftlite.volumeMounts" -}}
- name: data
  mountPath: /var/lib/raftlite
- name: config
  mountPath: /etc/raftlite/raftlite.yaml
  subPath: raftlite.yaml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- include "raftlite.secretMounts" (dict "root" .) }}
{{- end }}

{{/* The mounts of raftlite.secretVolumes (same arguments). */}}
{{- define "raftlite.secretMounts" -}}
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /etc/raftlite/tls
  readOnly: true
{{- end }}
{{- if .root.Values.auth.enabled }}
{{- if not .clientOnly }}
- name: auth
  mountPath: /etc/raftlite/auth
  readOnly: true
{{- end }}
- name: tokens
  mountPath: /etc/raftlite/tokens
  readOnly: true
{{- end }}
{{- end }}

{{/*
The Secret volumes: tls (ca.crt and each pod's POD.crt / POD.key), auth (auth.yaml), tokens
(admin). With .clientOnly (the scale-down hook) only what a client needs: ca.crt and the admin
token. Group-readable: the pods run with fsGroup 10001.
*/}}
{{- define "raftlite.secretVolumes" -}}
{{- $root := .root }}
{{- $fullname := include "raftlite.fullname" $root }}
{{- if $root.Values.tls.enabled }}
- name: tls
  {{- if $root.Values.tls.certManager.enabled }}
  # One Secret per pod (cert-manager Certificate <fullname>-<i>), projected into one directory.
  projected:
    defaultMode: 0440
    sources:
      - secret:
          name: {{ $fullname }}-0-tls
          items:
            - key: ca.crt
              path: ca.crt
      {{- if not .clientOnly }}
      {{- range $i := until (int $root.Values.replicas) }}
      - secret:
          name: {{ printf "%s-%d-tls" $fullname $i }}
          items:
            - key: tls.crt
              path: {{ printf "%s-%d.crt" $fullname $i }}
            - key: tls.key
              path: {{ printf "%s-%d.key" $fullname $i }}
      {{- end }}
      {{- end }}
  {{- else }}
  secret:
    secretName: {{ include "raftlite.tlsSecret" $root }}
    defaultMode: 0440
    {{- if .clientOnly }}
    items:
      - key: ca.crt
        path: ca.crt
    {{- end }}
  {{- end }}
{{- end }}
{{- if $root.Values.auth.enabled }}
{{- if not .clientOnly }}
- name: auth
  secret:
    secretName: {{ include "raftlite.tokensSecret" $root }}
    defaultMode: 0440
    items:
      - key: auth.yaml
        path: auth.yaml
{{- end }}
- name: tokens
  secret:
    secretName: {{ include "raftlite.tokensSecret" $root }}
    defaultMode: 0440
    items:
      - key: admin
        path: admin
{{- end }}
{{- end }}

{{/* A probe's action for health service .service: exec `raftlite health` with TLS, else gRPC. */}}
{{- define "raftlite.probeAction" -}}
{{- if .root.Values.tls.enabled }}
exec:
  command: ["/usr/local/bin/raftlite", "health", "--service", {{ .service | quote }}]
{{- else }}
grpc:
  port: {{ .root.Values.ports.grpc }}
  service: {{ .service | quote }}
{{- end }}
{{- end }}
