{{/* Names, labels and shared fragments of the schedctl chart. */}}

{{- define "schedctl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; the release name alone when it already contains the chart name. */}}
{{- define "schedctl.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "schedctl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "schedctl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "schedctl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "schedctl.labels" -}}
helm.sh/chart: {{ include "schedctl.chart" . }}
{{ include "schedctl.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: schedctl
{{- end }}

{{- define "schedctl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "schedctl.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "schedctl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret holding the database URL, or "" when none is needed (SQLite). */}}
{{- define "schedctl.databaseSecretName" -}}
{{- if eq .Values.database.type "postgresql" }}
{{- default (include "schedctl.fullname" .) .Values.database.existingSecret }}
{{- end }}
{{- end }}

{{- define "schedctl.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else -}}
database-url
{{- end }}
{{- end }}

{{/* The Secret holding the exporter token, or "" when the exporter runs unauthenticated. */}}
{{- define "schedctl.tokenSecretName" -}}
{{- if not .Values.exporter.auth.allowUnauthenticated }}
{{- default (include "schedctl.fullname" .) .Values.exporter.auth.existingSecret }}
{{- end }}
{{- end }}

{{- define "schedctl.tokenSecretKey" -}}
{{- if .Values.exporter.auth.existingSecret }}
{{- .Values.exporter.auth.existingSecretKey }}
{{- else -}}
exporter-token
{{- end }}
{{- end }}

{{/* The Secret and key of the admin API token (empty while the admin API is off). */}}
{{- define "schedctl.adminSecretName" -}}
{{- if .Values.exporter.admin.enabled }}
{{- default (include "schedctl.fullname" .) .Values.exporter.admin.existingSecret }}
{{- end }}
{{- end }}

{{- define "schedctl.adminSecretKey" -}}
{{- if .Values.exporter.admin.existingSecret }}
{{- .Values.exporter.admin.existingSecretKey }}
{{- else -}}
admin-token
{{- end }}
{{- end }}

{{/* Whether the chart generates the admin token into its own Secret. */}}
{{- define "schedctl.generatesAdminToken" -}}
{{- if and .Values.exporter.admin.enabled (not .Values.exporter.admin.existingSecret) }}true{{ end }}
{{- end }}

{{/* Whether the chart creates its own Secret (database URL and/or generated tokens). */}}
{{- define "schedctl.createsSecret" -}}
{{- $db := and (eq .Values.database.type "postgresql") (not .Values.database.existingSecret) }}
{{- $token := and (not .Values.exporter.auth.allowUnauthenticated) (not .Values.exporter.auth.existingSecret) }}
{{- if or $db $token (include "schedctl.generatesAdminToken" .) }}true{{ end }}
{{- end }}

{{/* The task file the scheduler reads: taskDefaults as `defaults:` and the task list. */}}
{{- define "schedctl.taskFile" -}}
{{- $file := dict "tasks" .Values.tasks }}
{{- with .Values.taskDefaults }}
{{- $_ := set $file "defaults" . }}
{{- end }}
{{- toYaml $file }}
{{- end }}

{{/* Environment shared by the migration, scheduler and exporter containers. */}}
{{- define "schedctl.databaseEnv" -}}
- name: SCHEDCTL_DATABASE_URL
{{- if eq .Values.database.type "sqlite" }}
  value: {{ printf "sqlite:///%s" .Values.database.sqlite.path | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ include "schedctl.databaseSecretName" . }}
      key: {{ include "schedctl.databaseSecretKey" . }}
{{- end }}
{{- end }}

{{/* Hardening shared by every container; the image runs as a non-root user. */}}
{{- define "schedctl.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The mounts every container needs: a writable /tmp and, for SQLite, the database dir. */}}
{{- define "schedctl.dataMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if eq .Values.database.type "sqlite" }}
- name: data
  mountPath: {{ dir .Values.database.sqlite.path }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express with a readable message, and a second line of defence for
installs run with --skip-schema-validation. Included by the Deployment.
*/}}
{{- define "schedctl.validateValues" -}}
{{- if lt (int .Values.replicas) 1 }}
{{- fail "replicas must be at least 1" }}
{{- end }}
{{- if and (eq .Values.database.type "sqlite") (gt (int .Values.replicas) 1) }}
{{- fail (printf "replicas %d needs database.type postgresql: a SQLite file cannot be shared between pods" (int .Values.replicas)) }}
{{- end }}
{{- if and (eq .Values.database.type "postgresql") (not .Values.database.url) (not .Values.database.existingSecret) }}
{{- fail "database.type postgresql needs database.existingSecret (a Secret holding the URL) or database.url" }}
{{- end }}
{{- if and .Values.database.url .Values.database.existingSecret }}
{{- fail "set only one of database.url and database.existingSecret" }}
{{- end }}
{{- if and (eq .Values.database.type "sqlite") (or .Values.database.url .Values.database.existingSecret) }}
{{- fail "database.url and database.existingSecret apply to database.type postgresql; SQLite uses database.sqlite.path" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled .Values.prometheusRule.enabled (not (contains "schedctl" (include "schedctl.fullname" .))) }}
{{- fail (printf "the shipped rules find the exporters by up{job=~\".*schedctl.*\"} and the ServiceMonitor's job is the Service name %q: choose a fullnameOverride containing \"schedctl\"" (include "schedctl.fullname" .)) }}
{{- end }}
{{- $names := dict }}
{{- range $i, $task := .Values.tasks }}
{{- if hasKey $names (toString $task.name) }}
{{- fail (printf "tasks[%d]: the task name %q is used twice; task names must be unique" $i $task.name) }}
{{- end }}
{{- $_ := set $names (toString $task.name) true }}
{{- end }}
{{- end }}

{{/* A label map on one line, for messages: "k1=v1, k2=v2". */}}
{{- define "schedctl.inlineMap" -}}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join ", " $pairs }}
{{- end }}
