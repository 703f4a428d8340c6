{{/* Names and labels, as `helm create` makes them. */}}
{{- define "projector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "projector.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "projector.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "projector.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "projector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "projector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "projector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "projector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: swe-ai-fleet
{{- end -}}

{{- define "projector.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A connection env var from the service-urls ConfigMap (optional: the toml value stays). */}}
{{- define "projector.urlEnv" -}}
{{- if .root.Values.connections.serviceUrlsConfigMap }}
- name: {{ .key }}
  valueFrom:
    configMapKeyRef:
      name: {{ .root.Values.connections.serviceUrlsConfigMap }}
      key: {{ .key }}
      optional: true
{{- end }}
{{- end -}}

{{/* A secret env var, only when its key is named. */}}
{{- define "projector.secretEnv" -}}
{{- if .key }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{/*
Env of every projector container: connections, secrets, the NATS creds file path.
Call with (dict "root" $ "neo4j" BOOL "secret" NAME "natsUserKey" K "natsPasswordKey" K "natsCredsKey" K);
"neo4j" false leaves Neo4j's user and password out (the streams-ensure hook never uses Neo4j,
and must not wait for a Secret it does not need).
*/}}
{{- define "projector.env" -}}
{{- include "projector.urlEnv" (dict "root" .root "key" "NATS_URL") }}
{{- include "projector.urlEnv" (dict "root" .root "key" "NEO4J_URI") }}
{{- include "projector.urlEnv" (dict "root" .root "key" "REDIS_HOST") }}
{{- include "projector.urlEnv" (dict "root" .root "key" "REDIS_PORT") }}
{{- if .neo4j }}
- name: NEO4J_USER
  value: {{ .root.Values.connections.neo4jUser | quote }}
{{- include "projector.secretEnv" (dict "env" "NEO4J_PASSWORD" "secret" .root.Values.secret.name "key" .root.Values.secret.neo4jPasswordKey) }}
{{- end }}
{{- include "projector.secretEnv" (dict "env" "NATS_USER" "secret" .secret "key" .natsUserKey) }}
{{- include "projector.secretEnv" (dict "env" "NATS_PASSWORD" "secret" .secret "key" .natsPasswordKey) }}
{{- if .natsCredsKey }}
- name: NATS_CREDS
  value: /var/run/projector/nats/nats.creds
{{- end }}
{{- end -}}

{{/* Volumes and mounts: projector.toml, /tmp, the NATS creds file when used. */}}
{{- define "projector.volumeMounts" -}}
- name: config
  mountPath: /etc/projector
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .natsCredsKey }}
- name: nats-creds
  mountPath: /var/run/projector/nats
  readOnly: true
{{- end }}
{{- end -}}

{{- define "projector.volumes" -}}
- name: config
  configMap:
    name: {{ .configMap }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .natsCredsKey }}
- name: nats-creds
  secret:
    secretName: {{ .secret }}
    items:
      - key: {{ .natsCredsKey }}
        path: nats.creds
{{- end }}
{{- end -}}

{{/* projector.toml from .Values.config (integers cast: Helm holds numbers as floats). */}}
{{- define "projector.toml" -}}
{{- $c := .Values.config -}}
{{- $n := .Values.connections -}}
# Rendered by the projector Helm chart from its values (config:). Connections here are the
# fallback: env from the service-urls ConfigMap and the Secret override them.
subject_prefix = {{ $c.subject_prefix | quote }}
default_generation = {{ $c.default_generation | quote }}

[nats]
url = {{ $n.natsUrl | quote }}
connect_timeout = {{ $c.nats.connect_timeout | quote }}
tls_required = {{ $c.nats.tls_required }}

[neo4j]
uri = {{ $n.neo4jUri | quote }}
user = {{ $n.neo4jUser | quote }}
password = ""
max_concurrent_writes = {{ $c.neo4j.max_concurrent_writes | int64 }}
max_connections = {{ $c.neo4j.max_connections | int64 }}
connect_timeout = {{ $c.neo4j.connect_timeout | quote }}

[valkey]
url = {{ $n.valkeyUrl | quote }}
key_prefix = {{ $c.valkey.key_prefix | quote }}
changelog_max_len = {{ $c.valkey.changelog_max_len | int64 }}
changelog_max_age = {{ $c.valkey.changelog_max_age | quote }}

[feed]
watermark_interval = {{ $c.feed.watermark_interval | quote }}
heartbeat = {{ $c.feed.heartbeat | quote }}
client_buffer = {{ $c.feed.client_buffer | int64 }}
max_clients = {{ $c.feed.max_clients | int64 }}

[stream_defaults]
replicas = {{ $c.stream_defaults.replicas | int64 }}
duplicate_window = {{ $c.stream_defaults.duplicate_window | quote }}
{{- range $c.streams }}

[[streams]]
name = {{ .name | quote }}
subjects = [{{ range $i, $s := .subjects }}{{ if $i }}, {{ end }}{{ $s | quote }}{{ end }}]
max_age = {{ .max_age | quote }}
max_msgs = {{ .max_msgs | int64 }}
{{- if hasKey . "replicas" }}
replicas = {{ .replicas | int64 }}
{{- end }}
{{- if hasKey . "duplicate_window" }}
duplicate_window = {{ .duplicate_window | quote }}
{{- end }}
{{- end }}

[archive]
enabled = {{ $c.archive.enabled }}
max_age = {{ $c.archive.max_age | quote }}
max_bytes = {{ $c.archive.max_bytes | int64 }}
max_msgs = {{ $c.archive.max_msgs | int64 }}

[dead_letters]
stream = {{ $c.dead_letters.stream | quote }}
subject_prefix = {{ $c.dead_letters.subject_prefix | quote }}

[partitions]
count = {{ $c.partitions.count | int64 }}
lease_ttl = {{ $c.partitions.lease_ttl | quote }}
lease_bucket = {{ $c.partitions.lease_bucket | quote }}
{{- range $c.projectors }}

[[projectors]]
name = {{ .name | quote }}
streams = [{{ range $i, $s := .streams }}{{ if $i }}, {{ end }}{{ $s | quote }}{{ end }}]
{{- end }}
{{ end -}}
