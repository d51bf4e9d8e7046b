{{/* The chart's name, or nameOverride. */}}
{{- define "homelab.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's object names: fullnameOverride when set; else "<release>" when it contains
     the chart's name, else "<release>-<name>". */}}
{{- define "homelab.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "homelab.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects carry the namespace too: two releases may share a name. */}}
{{- define "homelab.clusterName" -}}
{{- printf "%s-%s" (include "homelab.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "homelab.selectorLabels" -}}
app.kubernetes.io/name: {{ include "homelab.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "homelab.labels" -}}
{{ include "homelab.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "homelab.operatorSelector" -}}
{{ include "homelab.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "homelab.caSelector" -}}
{{ include "homelab.selectorLabels" . }}
app.kubernetes.io/component: cluster-autoscaler
{{- end -}}

{{/* The operator's ServiceAccount: serviceAccount.name, else the fullname (created unless
     serviceAccount.create is false; then it must exist). */}}
{{- define "homelab.serviceAccount" -}}{{ default (include "homelab.fullname" .) .Values.serviceAccount.name }}{{- end -}}
{{/* The account of the pods the operator creates: no API rights, no token mounted. */}}
{{- define "homelab.powerServiceAccount" -}}{{ include "homelab.fullname" . }}-power{{- end -}}
{{/* The label the operator puts on every Kubernetes Node it manages
     (src/operator/node/mod.rs, MANAGED_LABEL). */}}
{{- define "homelab.managedLabel" -}}infra.homecluster.dev/managed{{- end -}}
{{- define "homelab.caServiceAccount" -}}{{ include "homelab.fullname" . }}-cluster-autoscaler{{- end -}}
{{- define "homelab.grpcService" -}}{{ include "homelab.fullname" . }}-grpc{{- end -}}
{{- define "homelab.leaseName" -}}{{ include "homelab.fullname" . }}-leader{{- end -}}

{{/* What the Cluster Autoscaler dials: the gRPC Service's in-cluster name. */}}
{{- define "homelab.grpcAddress" -}}
{{- printf "%s.%s.svc:%d" (include "homelab.grpcService" .) .Release.Namespace (int .Values.grpc.port) -}}
{{- end -}}

{{- define "homelab.tlsEnabled" -}}{{ if ne .Values.tls.mode "none" }}true{{ end }}{{- end -}}

{{- define "homelab.serverTlsSecret" -}}
{{- if eq .Values.tls.mode "secret" -}}{{ .Values.tls.serverSecret }}{{- else -}}{{ include "homelab.fullname" . }}-grpc-server-tls{{- end -}}
{{- end -}}

{{- define "homelab.clientTlsSecret" -}}
{{- if eq .Values.tls.mode "secret" -}}{{ .Values.tls.clientSecret }}{{- else -}}{{ include "homelab.fullname" . }}-ca-client-tls{{- end -}}
{{- end -}}

{{/* Where the Cluster Autoscaler mounts its client certificate: run-operator's
     --cloud-config-tls-dir default. */}}
{{- define "homelab.caTlsDir" -}}/etc/cluster-autoscaler/homelab-grpc{{- end -}}

{{/* The cloud-config, line for line what `kubectl homelab run-operator --print-cloud-config
     --advertise-address <grpcAddress>` prints (with the --tls-* flags in TLS modes);
     tests/packaging.rs compares the two. */}}
{{- define "homelab.cloudConfig" -}}
# cluster-autoscaler --cloud-provider=externalgrpc --cloud-config=<this file>
address: {{ include "homelab.grpcAddress" . | toJson }}
{{- if include "homelab.tlsEnabled" . }}
# CA's client certificate and key (signed by the CA given to --client-ca), and the CA
# that signed this server's --tls-cert; the host in `address` must be in that certificate.
cert: {{ printf "%s/tls.crt" (include "homelab.caTlsDir" .) | toJson }}
key: {{ printf "%s/tls.key" (include "homelab.caTlsDir" .) | toJson }}
cacert: {{ printf "%s/ca.crt" (include "homelab.caTlsDir" .) | toJson }}
{{- end }}
grpc_timeout: 5s
{{ end -}}

{{- define "homelab.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Labels of a pod template: the selector's, the recommended ones, podLabels. */}}
{{- define "homelab.podLabels" -}}
{{ include "homelab.labels" . }}
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A pod's affinity: `affinity` when set, else off the Nodes the operator manages (it may
     power them off) and, for the operator (`spread` with the component label's value), its
     replicas on different nodes: required with hostNetwork (their ports would collide),
     preferred otherwise. Call with (dict "ctx" $ "component" "operator"|"cluster-autoscaler"
     "affinity" <the affinity value>). */}}
{{- define "homelab.affinity" -}}
{{- $ := .ctx -}}
{{- if .affinity -}}
{{ toYaml .affinity }}
{{- else -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      - matchExpressions:
          - key: {{ include "homelab.managedLabel" $ }}
            operator: DoesNotExist
{{- if eq .component "operator" }}
podAntiAffinity:
{{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (fromYaml (include "homelab.operatorSelector" $))) }}
{{- if $.Values.hostNetwork }}
  requiredDuringSchedulingIgnoredDuringExecution:
    {{- toYaml (list $term) | nindent 4 }}
{{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        {{- toYaml $term | nindent 8 }}
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* What templates/crds.yaml adds under each CRD's metadata. */}}
{{- define "homelab.crdMetadata" -}}
labels:
  {{- include "homelab.labels" . | nindent 2 }}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end -}}
