{{- define "weir.fullname" -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "weir.labels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "weir.nodeSelectorLabels" -}}
app.kubernetes.io/name: weir
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "weir.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* host of ordinal i */}}
{{- define "weir.host" -}}
{{ include "weir.fullname" .root }}-{{ .i }}.{{ include "weir.fullname" .root }}-headless.{{ .root.Release.Namespace }}.svc.{{ .root.Values.clusterDomain }}
{{- end -}}

{{/* id=host:port of every voter: the first `controllers` ordinals */}}
{{- define "weir.voters" -}}
{{- $root := . -}}
{{- $voters := list -}}
{{- range $i := until (int .Values.controllers) -}}
{{- $host := include "weir.host" (dict "root" $root "i" $i) -}}
{{- $voters = append $voters (printf "%d=%s:%d/%s:%d" (add $i 1) $host (int $root.Values.ports.controller) $host (int $root.Values.ports.controllerInternal)) -}}
{{- end -}}
{{- join "," $voters -}}
{{- end -}}

{{- define "weir.bootstrap" -}}
{{- $root := . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.controllers) -}}
{{- $hosts = append $hosts (printf "%s:%d" (include "weir.host" (dict "root" $root "i" $i)) (int $root.Values.ports.controller)) -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{/* the security environment shared by nodes and gateways */}}
{{- define "weir.securityEnv" -}}
{{- if .Values.tls.enabled }}
- name: WEIR_TLS_CA
  value: /etc/weir/tls/ca.crt
- name: WEIR_TLS_CERT
  value: /etc/weir/tls/tls.crt
- name: WEIR_TLS_KEY
  value: /etc/weir/tls/tls.key
{{- end }}
{{- if .Values.auth.enabled }}
- name: WEIR_AUTH_TOKEN_FILE
  value: /etc/weir/auth/tokens
{{- if .Values.auth.jwtIssuer }}
- name: WEIR_AUTH_JWKS_FILE
  value: /etc/weir/auth/jwks.json
- name: WEIR_AUTH_JWT_ISSUER
  value: {{ .Values.auth.jwtIssuer | quote }}
{{- end }}
{{- if .Values.auth.jwtAudience }}
- name: WEIR_AUTH_JWT_AUDIENCE
  value: {{ .Values.auth.jwtAudience | quote }}
{{- end }}
{{- if .Values.auth.authorization }}
- name: WEIR_AUTHORIZATION
  value: "true"
{{- end }}
- name: WEIR_SUPER_USERS
  value: {{ join "," .Values.auth.superUsers | quote }}
{{- end }}
{{- end -}}

{{- define "weir.securityMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/weir/tls
  readOnly: true
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  mountPath: /etc/weir/auth
  readOnly: true
{{- end }}
{{- end -}}

{{- define "weir.securityVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- if .Values.auth.enabled }}
- name: auth
  secret:
    secretName: {{ .Values.auth.secretName }}
{{- end }}
{{- end -}}

{{- define "weir.scheme" -}}
{{ if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end }}
{{- end -}}
