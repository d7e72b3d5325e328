{{- define "outbox-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "outbox-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "outbox-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "outbox-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "outbox-operator.labels" -}}
{{ include "outbox-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "outbox-operator.loadtestNamespaces" -}}
{{- if .Values.loadtest.namespaces -}}
{{- toJson .Values.loadtest.namespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{- /* The operator's ServiceAccount: the chart's own, or the one named with create=false. */ -}}
{{- define "outbox-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "outbox-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- if not .Values.serviceAccount.name -}}
{{- fail "serviceAccount.create=false needs serviceAccount.name: the existing ServiceAccount (in the release namespace) that the operator runs as and the chart binds its RBAC to" -}}
{{- end -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* "true" when the operator replicas elect a leader: leaderElection.enabled true, or
auto (also null) with more than one replica. false with more than one replica fails:
two operators would both reconcile. */ -}}
{{- define "outbox-operator.leaderElection" -}}
{{- $enabled := .Values.leaderElection.enabled -}}
{{- $replicas := int .Values.replicaCount -}}
{{- if kindIs "bool" $enabled -}}
{{- if and (not $enabled) (gt $replicas 1) -}}
{{- fail (printf "leaderElection.enabled=false with replicaCount=%d: more than one operator replica needs leader election, or both would reconcile the same objects. Set leaderElection.enabled to auto (or true), or replicaCount to 1." $replicas) -}}
{{- end -}}
{{- ternary "true" "false" $enabled -}}
{{- else -}}
{{- ternary "true" "false" (gt $replicas 1) -}}
{{- end -}}
{{- end -}}

{{- define "outbox-operator.workerImage" -}}
{{- printf "%s:%s" .Values.workerImage.repository (default .Chart.AppVersion .Values.workerImage.tag) -}}
{{- end -}}

{{- /* Fails rendering when `value` (a chart value that asks for a monitoring.coreos.com/v1
object of `kind`) is on and the cluster does not serve that kind: the objects would be
refused one by one at install time otherwise, after the rest of the chart. Call with
(list . "metrics.podMonitor.enabled" "PodMonitor"). */ -}}
{{- define "outbox-operator.requireMonitoringApi" -}}
{{- $ctx := index . 0 -}}
{{- $value := index . 1 -}}
{{- $kind := index . 2 -}}
{{- if not ($ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind)) -}}
{{- fail (printf "%s=true needs the Prometheus Operator's %s kind (monitoring.coreos.com/v1), which this cluster does not serve. Install the Prometheus Operator (or kube-prometheus-stack) first, or leave %s off and scrape with your own config (docs/monitoring.md). With helm template, pass --api-versions monitoring.coreos.com/v1/%s." $value $kind $value $kind) -}}
{{- end -}}
{{- end -}}
