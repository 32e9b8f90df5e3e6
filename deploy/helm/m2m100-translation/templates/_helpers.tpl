{{/*
Names. They are fixed, as in k8s/: the server's objects are "translation" because the ServiceMonitor's scrape job
is named after the Service and the alert rules, the dashboard and the adapter rules select job="translation" and
horizontalpodautoscaler="translation"; Redis is "redis" because the Secret's URL names redis.<namespace>.svc.
A second release needs a namespace of its own.
*/}}
{{- define "translation.name" -}}
translation
{{- end }}

{{- define "translation.fullname" -}}
translation
{{- end }}

{{- define "translation.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object carries (the recommended labels, as k8s/base sets them; managed-by is Helm here, and
helm.sh/chart is added). instance is the release name: translation, or translation-dev / -staging / -prod
as the environment overlays name it.
*/}}
{{- define "translation.releaseLabels" -}}
helm.sh/chart: {{ include "translation.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: translation
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The translation service's objects: its own version, the chart's appVersion (service/__init__.py's). */}}
{{- define "translation.labels" -}}
app.kubernetes.io/name: {{ include "translation.name" . }}
{{ include "translation.releaseLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* Selectors name only what never changes: a Deployment's selector is immutable. */}}
{{- define "translation.selectorLabels" -}}
app.kubernetes.io/name: {{ include "translation.name" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "translation.serverLabels" -}}
{{ include "translation.labels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/* Redis and Fluent Bit carry their own version (a dependency's, from its image tag). */}}
{{- define "translation.redisVersion" -}}
{{- regexFind "^[0-9]+(\\.[0-9]+)*" .Values.redis.image.tag | default .Values.redis.image.tag }}
{{- end }}

{{- define "translation.redisSelectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/component: cache
{{- end }}

{{- define "translation.redisLabels" -}}
app.kubernetes.io/name: redis
{{ include "translation.releaseLabels" . }}
app.kubernetes.io/version: {{ include "translation.redisVersion" . | quote }}
{{- end }}

{{- define "translation.fluentBitSelectorLabels" -}}
app.kubernetes.io/name: fluent-bit
app.kubernetes.io/component: logging
{{- end }}

{{- define "translation.fluentBitLabels" -}}
{{ include "translation.fluentBitSelectorLabels" . }}
{{ include "translation.releaseLabels" . }}
app.kubernetes.io/version: {{ regexFind "^[0-9]+(\\.[0-9]+)*" .Values.logging.image.tag | default .Values.logging.image.tag | quote }}
{{- end }}

{{/* The flavour's preset (values.flavours.<flavour>). */}}
{{- define "translation.preset" -}}
{{- $preset := index .Values.flavours .Values.flavour }}
{{- if not $preset }}{{ fail (printf "flavour %q has no preset under flavours" .Values.flavour) }}{{ end }}
{{- toYaml $preset }}
{{- end }}

{{- define "translation.image" -}}
{{- $preset := include "translation.preset" . | fromYaml }}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion ($preset.imageTagSuffix | default "")) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The service's settings: the flavour's, then values.config over them; MT_API_KEYS_FILE with api keys on. */}}
{{- define "translation.config" -}}
{{- $preset := include "translation.preset" . | fromYaml }}
{{- $config := merge (deepCopy (.Values.config | default dict)) ($preset.config | default dict) }}
{{- if .Values.apiKeys.enabled }}
{{- $_ := set $config "MT_API_KEYS_FILE" (printf "%s/%s" (trimSuffix "/" .Values.apiKeys.mountPath) .Values.apiKeys.key) }}
{{- end }}
{{- range $name, $value := $config }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
