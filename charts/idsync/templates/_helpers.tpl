{{/*
The name every object of a release starts with: the release name when it
already says idsync ("idsync", "idsync-eu"), else "<release>-idsync", so a
release called "admin" makes "admin-idsync-admin", never a ClusterRole
"admin", and two releases never share a cluster-scoped name.
*/}}
{{- define "idsync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels of every object; selectors use only name and instance. */}}
{{- define "idsync.labels" -}}
app.kubernetes.io/name: idsync
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "idsync.selectorLabels" -}}
app.kubernetes.io/name: idsync
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* "true" when the store is PostgreSQL (store.postgres.url or urlSecret). */}}
{{- define "idsync.postgres" -}}
{{- if or .Values.store.postgres.url .Values.store.postgres.urlSecret.name -}}true{{- end -}}
{{- end -}}
