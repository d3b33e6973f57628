{{/*
The names and labels of runtime/src/k8s.rs. No Helm management labels: the provisioner
adds none, and this chart's objects must equal its objects.
*/}}

{{/* Fixed by the runtime (k8s.rs, NAMESPACE). */}}
{{- define "nats-tenant.namespace" -}}vrsky-tenants{{- end -}}

{{/* instance_name: "nats-{tenant}-{N}", a DNS label of at most 63 characters. */}}
{{- define "nats-tenant.name" -}}
{{- $tenant := toString .Values.tenant -}}
{{- if not (regexMatch "^[a-z0-9][a-z0-9-]{0,62}$" $tenant) -}}
{{- fail (printf "tenant %q is not a tenant id (^[a-z0-9][a-z0-9-]{0,62}$)" $tenant) -}}
{{- end -}}
{{- $n := int64 .Values.instance -}}
{{- if lt $n 1 }}{{ fail (printf "instance must be 1 or more, got %v" .Values.instance) }}{{ end -}}
{{- $name := printf "nats-%s-%d" $tenant $n -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "%s is longer than the 63 characters a Kubernetes name allows (tenant id too long for this provisioner)" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* labels: on every object and the pod template. */}}
{{- define "nats-tenant.labels" -}}
app: nats
app.kubernetes.io/component: tenant-nats
app.kubernetes.io/instance: {{ include "nats-tenant.name" . }}
app.kubernetes.io/managed-by: vrsky
app.kubernetes.io/name: nats
vrsky.io/instance: {{ int64 .Values.instance | toString | quote }}
vrsky.io/tenant: {{ toString .Values.tenant | quote }}
{{- end -}}

{{/* selector: the instance label alone. */}}
{{- define "nats-tenant.selector" -}}
app.kubernetes.io/instance: {{ include "nats-tenant.name" . }}
{{- end -}}

{{/* server_config: the Secret's nats.conf, byte for byte. */}}
{{- define "nats-tenant.serverConfig" -}}
{{- $auth := required "auth is required: the server's auth block (Trust::server_auth)" .Values.auth -}}
{{- printf "server_name: \"%s\"\nlisten: \"0.0.0.0:4222\"\nhttp: \"0.0.0.0:8222\"\nmax_payload: 8MB\nmax_pending: 64MB\n%stls {\n  cert_file: \"/etc/nats-tls/tls.crt\"\n  key_file: \"/etc/nats-tls/tls.key\"\n  timeout: 5\n}\n" (include "nats-tenant.name" .) $auth -}}
{{- end -}}
