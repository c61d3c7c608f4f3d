{{/* Labels of node pods. */}}
{{- define "shoal.nodeLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end }}

{{/* Labels of coordinator pods. */}}
{{- define "shoal.coordinatorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end }}

{{/* Name of the node StatefulSet (pods are <it>-0, <it>-1, ...). */}}
{{- define "shoal.nodes" -}}
{{ .Release.Name }}
{{- end }}

{{- define "shoal.headless" -}}
{{ .Release.Name }}-headless
{{- end }}

{{/* Comma-separated seed addresses: the first nodes.seeds pods. */}}
{{- define "shoal.seeds" -}}
{{- $root := . -}}
{{- $list := list -}}
{{- range $i := until (int .Values.nodes.seeds) -}}
{{- $list = append $list (printf "%s-%d.%s.$(POD_NAMESPACE).svc.cluster.local:%d" (include "shoal.nodes" $root) $i (include "shoal.headless" $root) (int $root.Values.nodes.internalPort)) -}}
{{- end -}}
{{ join "," $list }}
{{- end }}

{{/* Pod and container security contexts. */}}
{{- define "shoal.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "shoal.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}
