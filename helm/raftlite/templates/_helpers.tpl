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

{{/*
The raftlite container's environment; docker/compose.yaml sets the same names
(helm/check_compose.py compares them). No HOSTNAME: the pod's own name comes from POD_NAME.
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

{{- define "raftlite.volumeMounts" -}}
- name: data
  mountPath: /var/lib/raftlite
- name: config
  mountPath: /etc/raftlite
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}
