{{/* Names, labels and the pieces every workload shares. */}}

{{- define "qyai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qyai.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* qyai.labels: the common labels; pass (dict "ctx" $ "component" "gateway"). */}}
{{- define "qyai.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "qyai.selectorLabels" . }}
app.kubernetes.io/version: {{ include "qyai.tag" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: qyai
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "qyai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qyai.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "qyai.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qyai.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "qyai.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/* qyai.image: (dict "ctx" $ "service" "gateway"). */}}
{{- define "qyai.image" -}}
{{- $tag := include "qyai.tag" .ctx -}}
{{- if eq $tag "latest" -}}{{- fail "image.tag: latest names no particular build; set a version" -}}{{- end -}}
{{- printf "%s/%s:%s" .ctx.Values.image.repository .service $tag -}}
{{- end -}}

{{- define "qyai.secretName" -}}
{{- default (printf "%s-secrets" (include "qyai.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The pod security context of every pod: the images' user, and the
spool volume's group. OnRootMismatch: with Always the kubelet re-chowns the
spool at every mount and makes its files group-writable, which the gateway
then refuses (README, Operations). */}}
{{- define "qyai.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "qyai.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* qyai.podCommon: service account, pull secrets, scheduling;
(dict "ctx" $ "component" "gateway" "v" .Values.gateway). */}}
{{- define "qyai.podCommon" -}}
serviceAccountName: {{ include "qyai.serviceAccountName" .ctx }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- include "qyai.podSecurityContext" .ctx | nindent 2 }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .v.topologySpread }}
topologySpreadConstraints:
  {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "qyai.selectorLabels" (dict "ctx" $.ctx "component" $.component) | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* qyai.secretItems: the Secret keys one workload reads; (dict "ctx" $ "service" "gateway"). */}}
{{- define "qyai.secretItems" -}}
{{- $v := .ctx.Values -}}
{{- $m := $v.nats.auth.method -}}
{{- $items := list -}}
{{- if or (eq .service "gateway") (eq .service "admin") -}}
{{- $items = append $items "key-pepper" -}}
{{- end -}}
{{- if and (eq .service "gateway") (include "qyai.upstreamKey" .ctx) -}}
{{- $items = append $items "upstream-api-key" -}}
{{- end -}}
{{- if eq .service "admin" -}}
{{- $items = append $items "admin-tokens" -}}
{{- end -}}
{{- if and $v.clickhouse.usePassword (has .service (list "meter" "admin" "migrate")) -}}
{{- $items = append $items "clickhouse-password" -}}
{{- end -}}
{{- if has .service (list "gateway" "meter") -}}
{{- if eq $m "userPassword" -}}{{- $items = append $items (printf "nats-%s-password" .service) -}}{{- end -}}
{{- if eq $m "token" -}}{{- $items = append $items "nats-token" -}}{{- end -}}
{{- if eq $m "creds" -}}{{- $items = append $items (printf "nats-%s-creds" .service) -}}{{- end -}}
{{- end -}}
{{- toJson $items -}}
{{- end -}}

{{/* qyai.secretVolume: the secret volume of a workload, only the keys it reads. */}}
{{- define "qyai.secretVolume" -}}
{{- $items := include "qyai.secretItems" . | fromJsonArray -}}
{{- if $items -}}
- name: secrets
  secret:
    secretName: {{ .secretName | default (include "qyai.secretName" .ctx) }}
    defaultMode: 0440
    items:
      {{- range $items }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{- define "qyai.natsEnv" -}}
{{- $v := .ctx.Values -}}
- name: NATS_URL
  value: {{ join "," $v.nats.urls | quote }}
- name: STREAM_REPLICAS
  value: {{ $v.nats.streamReplicas | quote }}
{{- if eq $v.nats.auth.method "userPassword" }}
- name: NATS_USER
  value: {{ index $v.nats.auth (printf "%sUser" .service) | quote }}
- name: NATS_PASSWORD_FILE
  value: /run/secrets/qyai/nats-{{ .service }}-password
{{- else if eq $v.nats.auth.method "token" }}
- name: NATS_TOKEN_FILE
  value: /run/secrets/qyai/nats-token
{{- else if eq $v.nats.auth.method "creds" }}
- name: NATS_CREDS_FILE
  value: /run/secrets/qyai/nats-{{ .service }}-creds
{{- end }}
{{- if $v.nats.tls.enabled }}
- name: NATS_TLS_CA_FILE
  value: /run/secrets/nats-tls/ca.crt
{{- if $v.nats.tls.clientCert }}
- name: NATS_TLS_CERT_FILE
  value: /run/secrets/nats-tls/tls.crt
- name: NATS_TLS_KEY_FILE
  value: /run/secrets/nats-tls/tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "qyai.natsTLSVolume" -}}
{{- if .Values.nats.tls.enabled -}}
- name: nats-tls
  secret:
    secretName: {{ required "nats.tls.secretName is required with nats.tls.enabled" .Values.nats.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "qyai.natsTLSMount" -}}
{{- if .Values.nats.tls.enabled -}}
- name: nats-tls
  mountPath: /run/secrets/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "qyai.clickhouseEnv" -}}
{{- $c := .Values.clickhouse -}}
- name: CLICKHOUSE_ADDR
  value: {{ $c.address | quote }}
- name: CLICKHOUSE_DATABASE
  value: {{ $c.database | quote }}
- name: CLICKHOUSE_USER
  value: {{ $c.user | quote }}
{{- if $c.usePassword }}
- name: CLICKHOUSE_PASSWORD_FILE
  value: /run/secrets/qyai/clickhouse-password
{{- end }}
{{- if $c.cluster }}
- name: CLICKHOUSE_CLUSTER
  value: {{ $c.cluster | quote }}
{{- end }}
{{- end -}}

{{- define "qyai.redisEnv" -}}
- name: REDIS_ADDR
  value: {{ join "," .Values.redis.addresses | quote }}
- name: REDIS_TIMEOUT
  value: {{ .Values.redis.timeout | quote }}
{{- end -}}

{{/* qyai.probes: liveness from /healthz, readiness from /readyz, on the named port. */}}
{{- define "qyai.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ . }}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end -}}

{{/* qyai.configChecksum: a checksum of the given templates' renders. */}}
{{- define "qyai.checksum" -}}
{{- $out := "" -}}
{{- range .files -}}
{{- $out = print $out (include (print $.ctx.Template.BasePath "/" .) $.ctx) -}}
{{- end -}}
{{- $out | sha256sum -}}
{{- end -}}

{{/* qyai.upstreamKey: non-empty when the gateway gets an upstream key (an
existingSecret always has one; a blank key file is a configuration error). */}}
{{- define "qyai.upstreamKey" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.upstreamApiKey }}true{{ end -}}
{{- end -}}
