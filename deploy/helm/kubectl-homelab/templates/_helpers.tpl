{{/* The release's object names: "<release>" when it names the chart, else "<release>-kubectl-homelab". */}}
{{- define "homelab.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects carry the namespace too: two releases may share a name. */}}
{{- define "homelab.clusterName" -}}
{{- printf "%s-%s" (include "homelab.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "homelab.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
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

{{- define "homelab.serviceAccount" -}}{{ include "homelab.fullname" . }}{{- end -}}
{{/* The account of the pods the operator creates: no API rights, no token mounted. */}}
{{- define "homelab.powerServiceAccount" -}}{{ include "homelab.fullname" . }}-power{{- end -}}
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
