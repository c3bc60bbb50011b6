{{/* The name of every object: the release name, with "tailsift" unless it says so. */}}
{{- define "tailsift.fullname" -}}
{{- if contains "tailsift" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tailsift" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tailsift.selectorLabels" -}}
app.kubernetes.io/name: tailsift
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tailsift.labels" -}}
{{ include "tailsift.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tailsift.secretName" -}}
{{- default (include "tailsift.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "tailsift.hasSecret" -}}
{{- if or .Values.existingSecret .Values.secret.env .Values.secret.files -}}true{{- end -}}
{{- end -}}
