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


{{/*
The config file: the chart's values in tailsift's shape, then `config:` merged over
it, so any key can be set (a key in `config` wins).
*/}}
{{- define "tailsift.config" -}}
{{- $consumer := dict -}}
{{- if eq .Values.workload "StatefulSet" -}}
{{- /* Static membership: the pod's stable name. */ -}}
{{- $_ := set $consumer "group.instance.id" "${env:POD_NAME}" -}}
{{- end -}}
{{- range $k, $v := .Values.kafka.consumer -}}
{{- $_ := set $consumer $k (toString $v) -}}
{{- end -}}
{{- $kafka := dict "brokers" .Values.kafka.brokers "group_id" .Values.kafka.groupId "input_topics" .Values.kafka.inputTopics "output_topic" .Values.kafka.outputTopic "dead_letter_topic" .Values.kafka.deadLetterTopic "exactly_once" .Values.kafka.exactlyOnce "client" .Values.kafka.client "consumer" $consumer -}}
{{- with .Values.kafka.decisionsTopic -}}
{{- $_ := set $kafka "decisions_topic" . -}}
{{- end -}}
{{- $cfg := dict "kafka" $kafka "policies" .Values.policies -}}
{{- $_ := set $cfg "buffer" (dict "decision_wait" .Values.buffer.decisionWait "shards" .Values.buffer.shards) -}}
{{- $_ := set $cfg "memory" (dict "limit" (printf "%dMi" (int .Values.memory.limitMiB))) -}}
{{- $_ := set $cfg "telemetry" (dict "listen" "0.0.0.0:9464" "logs" (dict "level" .Values.logs.level "encoding" .Values.logs.encoding)) -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy (.Values.config | default dict))) -}}
{{- end -}}

{{/*
What of the config only a restart applies: everything but the policies, which
reload live. Its checksum on the pod template rolls the pods when it changes.
*/}}
{{- define "tailsift.restartConfig" -}}
{{- omit (include "tailsift.config" . | fromYaml) "policies" "sample_on_first_match" | toYaml -}}
{{- end -}}

{{- define "tailsift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tailsift.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
