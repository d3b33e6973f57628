{{/*
Names, labels and the escape hatches shared by every template of the chart.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "vrsky.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: fullnameOverride, or the release name (when it contains the
chart's name), or "<release>-<name>". The StatefulSet's pods are "<fullname>-<N>", so
keep it short enough for the pod names' 63 characters.
*/}}
{{- define "vrsky.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<name>-<version>" for the helm.sh/chart label. */}}
{{- define "vrsky.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The headless Service the StatefulSet is governed by. */}}
{{- define "vrsky.headlessServiceName" -}}
{{- printf "%s-headless" (include "vrsky.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The namespace the Kubernetes provisioner creates tenant NATS instances in. Fixed by the
runtime (runtime/src/k8s.rs, NAMESPACE), so it is not a value.
*/}}
{{- define "vrsky.tenantNamespace" -}}vrsky-tenants{{- end -}}

{{/*
Selector labels: the pods of this release's runtime. `app.kubernetes.io/name: vrsky` and
the port named `http` are what deploy/monitoring/prometheus.yml discovers; the component
`runtime` is what deploy/k8s/network-policies.yaml selects.
*/}}
{{- define "vrsky.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vrsky.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: runtime
{{- end -}}

{{/* Labels on every object: selector labels, chart labels, global.labels. */}}
{{- define "vrsky.labels" -}}
{{ include "vrsky.selectorLabels" . }}
app.kubernetes.io/part-of: vrsky
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "vrsky.chart" . }}
{{- with .Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference from {registry, repository, tag, pullPolicy}: the image's registry,
else global.image.registry; the tag, else the chart's appVersion; the pull policy, else
global.image.pullPolicy. Call with (dict "image" .Values.image "ctx" $).
*/}}
{{- define "vrsky.image" -}}
{{- $registry := .image.registry | default .ctx.Values.global.image.registry -}}
{{- $ref := printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion | toString) -}}
{{- if $registry }}{{ $ref = printf "%s/%s" (trimSuffix "/" $registry) $ref }}{{ end -}}
image: {{ $ref | quote }}
{{- with (.image.pullPolicy | default .ctx.Values.global.image.pullPolicy) }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end -}}

{{/* imagePullSecrets from global.image.pullSecretNames. */}}
{{- define "vrsky.imagePullSecrets" -}}
{{- with .Values.global.image.pullSecretNames }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* ---- merge/patch escape hatches (kept identical in every chart: deploy/helm/check.py) ---- */}}

{{/*
vrsky.merge: deep-merges .merge into .obj (Helm's mergeOverwrite: maps merge, lists and
scalars of .merge replace). The NATS chart's `merge` convention. Output: JSON {"v": obj}.
*/}}
{{- define "vrsky.merge" -}}
{{- $obj := deepCopy (.obj | default dict) -}}
{{- if .merge -}}
{{- if not (kindIs "map" .merge) -}}
{{- fail (printf "%s.merge must be a map, got %s" (.what | default "merge") (kindOf .merge)) -}}
{{- end -}}
{{- $obj = mergeOverwrite $obj (deepCopy .merge) -}}
{{- end -}}
{{- toJson (dict "v" $obj) -}}
{{- end -}}

{{/*
vrsky.patch: applies .patch, a JSON Patch (RFC 6902: add, remove, replace, move, copy,
test; paths are JSON pointers, "-" appends to a list), to .obj. The NATS chart's `patch`
convention. Output: JSON {"v": obj}. A patch that does not apply fails the render with
the operation's index and path.
*/}}
{{- define "vrsky.patch" -}}
{{- $doc := get (toJson (dict "v" (.obj | default dict)) | fromJson) "v" -}}
{{- $what := .what | default "patch" -}}
{{- if and .patch (not (kindIs "slice" .patch)) -}}
{{- fail (printf "%s.patch must be a list of JSON Patch operations, got %s" $what (kindOf .patch)) -}}
{{- end -}}
{{- range $n, $op := (.patch | default list) -}}
{{- $where := printf "%s.patch[%d]" $what $n -}}
{{- if not (kindIs "map" $op) }}{{ fail (printf "%s: an operation is a map {op, path, ...}" $where) }}{{ end -}}
{{- if not (has $op.op (list "add" "remove" "replace" "move" "copy" "test")) -}}
{{- fail (printf "%s: op must be add, remove, replace, move, copy or test, got %v" $where $op.op) -}}
{{- end -}}
{{- if not (hasKey $op "path") }}{{ fail (printf "%s: no path" $where) }}{{ end -}}
{{- $path := include "vrsky.jsonpointer" (dict "pointer" $op.path "where" $where) | fromJson -}}
{{- if has $op.op (list "add" "replace" "test") -}}
{{- if not (hasKey $op "value") }}{{ fail (printf "%s: %s needs a value" $where $op.op) }}{{ end -}}
{{- end -}}
{{- $value := $op.value -}}
{{- if has $op.op (list "move" "copy") -}}
{{- if not (hasKey $op "from") }}{{ fail (printf "%s: %s needs from" $where $op.op) }}{{ end -}}
{{- $from := include "vrsky.jsonpointer" (dict "pointer" $op.from "where" $where) | fromJson -}}
{{- $value = get (include "vrsky.jsonpatch.get" (dict "node" $doc "segs" $from.segs "where" $where) | fromJson) "v" -}}
{{- if eq $op.op "move" -}}
{{- if hasPrefix (printf "%s/" $op.from) (printf "%s/" $op.path) -}}
{{- if ne $op.from $op.path }}{{ fail (printf "%s: cannot move %s into itself" $where $op.from) }}{{ end -}}
{{- end -}}
{{- $doc = get (include "vrsky.jsonpatch.put" (dict "node" $doc "segs" $from.segs "op" "remove" "value" nil "where" $where) | fromJson) "v" -}}
{{- end -}}
{{- end -}}
{{- if eq $op.op "test" -}}
{{- $have := get (include "vrsky.jsonpatch.get" (dict "node" $doc "segs" $path.segs "where" $where) | fromJson) "v" -}}
{{- $want := get (toJson (dict "v" $value) | fromJson) "v" -}}
{{- if not (deepEqual $have $want) -}}
{{- fail (printf "%s: test of %s failed: %s is not %s" $where $op.path (toJson $have) (toJson $want)) -}}
{{- end -}}
{{- else -}}
{{- $put := ternary "add" $op.op (has $op.op (list "move" "copy")) -}}
{{- $doc = get (include "vrsky.jsonpatch.put" (dict "node" $doc "segs" $path.segs "op" $put "value" $value "where" $where) | fromJson) "v" -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "v" $doc) -}}
{{- end -}}

{{/* A JSON pointer ("" or "/a/b~1c") as its unescaped segments: JSON {"segs": [...]}. */}}
{{- define "vrsky.jsonpointer" -}}
{{- $p := toString .pointer -}}
{{- if eq $p "" -}}
{{- toJson (dict "segs" list) -}}
{{- else -}}
{{- if not (hasPrefix "/" $p) }}{{ fail (printf "%s: path %q must be empty or start with /" .where $p) }}{{ end -}}
{{- $segs := list -}}
{{- range (rest (splitList "/" $p)) -}}
{{- $segs = append $segs (. | replace "~1" "/" | replace "~0" "~") -}}
{{- end -}}
{{- toJson (dict "segs" $segs) -}}
{{- end -}}
{{- end -}}

{{/* The value at .segs in .node: JSON {"v": value}; fails when there is none. */}}
{{- define "vrsky.jsonpatch.get" -}}
{{- $node := .node -}}
{{- range $seg := .segs -}}
{{- if kindIs "map" $node -}}
{{- if not (hasKey $node $seg) }}{{ fail (printf "%s: no member %q" $.where $seg) }}{{ end -}}
{{- $node = index $node $seg -}}
{{- else if kindIs "slice" $node -}}
{{- if not (regexMatch "^(0|[1-9][0-9]*)$" $seg) }}{{ fail (printf "%s: %q is not a list index" $.where $seg) }}{{ end -}}
{{- if ge (atoi $seg) (len $node) }}{{ fail (printf "%s: index %s is past the list's end" $.where $seg) }}{{ end -}}
{{- $node = index $node (atoi $seg) -}}
{{- else -}}
{{- fail (printf "%s: cannot look into a %s at %q" $.where (kindOf $node) $seg) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "v" $node) -}}
{{- end -}}

{{/*
.node with .op ("add", "replace" or "remove") applied at .segs, recursively: JSON
{"v": node}. "add" on a map member sets it, on a list index inserts before it ("-": at the
end); "replace" and "remove" need the target to exist.
*/}}
{{- define "vrsky.jsonpatch.put" -}}
{{- $node := .node -}}
{{- if eq (len .segs) 0 -}}
{{- if eq .op "remove" }}{{ fail (printf "%s: cannot remove the whole object" .where) }}{{ end -}}
{{- toJson (dict "v" .value) -}}
{{- else -}}
{{- $seg := first .segs -}}
{{- $rest := rest .segs -}}
{{- if kindIs "map" $node -}}
{{- if or (ne .op "add") (gt (len $rest) 0) -}}
{{- if not (hasKey $node $seg) }}{{ fail (printf "%s: no member %q" .where $seg) }}{{ end -}}
{{- end -}}
{{- if gt (len $rest) 0 -}}
{{- $child := get (include "vrsky.jsonpatch.put" (dict "node" (index $node $seg) "segs" $rest "op" .op "value" .value "where" .where) | fromJson) "v" -}}
{{- $_ := set $node $seg $child -}}
{{- else if eq .op "remove" -}}
{{- $_ := unset $node $seg -}}
{{- else -}}
{{- $_ := set $node $seg .value -}}
{{- end -}}
{{- else if kindIs "slice" $node -}}
{{- $n := len $node -}}
{{- $i := 0 -}}
{{- if and (eq $seg "-") (eq .op "add") (eq (len $rest) 0) -}}
{{- $i = $n -}}
{{- else if regexMatch "^(0|[1-9][0-9]*)$" $seg -}}
{{- $i = atoi $seg -}}
{{- else -}}
{{- fail (printf "%s: %q is not a list index" .where $seg) -}}
{{- end -}}
{{- $limit := ternary (add1 $n) $n (and (eq .op "add") (eq (len $rest) 0)) -}}
{{- if ge $i (int $limit) }}{{ fail (printf "%s: index %s is past the list's end" .where $seg) }}{{ end -}}
{{- $before := slice $node 0 $i -}}
{{- $after := slice $node $i -}}
{{- if gt (len $rest) 0 -}}
{{- $child := get (include "vrsky.jsonpatch.put" (dict "node" (index $node $i) "segs" $rest "op" .op "value" .value "where" .where) | fromJson) "v" -}}
{{- $node = concat $before (list $child) (rest $after) -}}
{{- else if eq .op "add" -}}
{{- $node = concat $before (list .value) $after -}}
{{- else if eq .op "remove" -}}
{{- $node = concat $before (rest $after) -}}
{{- else -}}
{{- $node = concat $before (list .value) (rest $after) -}}
{{- end -}}
{{- else -}}
{{- fail (printf "%s: cannot look into a %s at %q" .where (kindOf $node) $seg) -}}
{{- end -}}
{{- toJson (dict "v" $node) -}}
{{- end -}}
{{- end -}}

{{/*
vrsky.object: renders one Kubernetes object. .yaml is the object as YAML (a template's
output); .hatch is its {merge, patch} values; .what names them in errors. The object is
deep-merged with hatch.merge, then patched with hatch.patch (in that order).
*/}}
{{- define "vrsky.object" -}}
{{- $obj := .yaml | fromYaml -}}
{{- if hasKey $obj "Error" -}}
{{- fail (printf "%s: the template's YAML does not parse: %s" .what (index $obj "Error")) -}}
{{- end -}}
{{- $hatch := .hatch | default dict -}}
{{- $obj = get (include "vrsky.merge" (dict "obj" $obj "merge" $hatch.merge "what" .what) | fromJson) "v" -}}
{{- $obj = get (include "vrsky.patch" (dict "obj" $obj "patch" $hatch.patch "what" .what) | fromJson) "v" -}}
{{- toYaml $obj -}}
{{- end -}}
{{/* ---- end of merge/patch ---- */}}

{{/*
TOML, for the runtime's configuration file (figment's Toml provider). Helm's own toToml
writes every number of the values as a float (`3.0`), which the runtime refuses for its
integer keys, so this writes whole numbers as integers. Nulls are left out (so a value
can unset a chart default). Call with (dict "data" map "prefix" "").
*/}}
{{- define "vrsky.toml" -}}
{{- $prefix := .prefix -}}
{{- $data := .data -}}
{{- $tables := list -}}
{{- range $k, $v := $data -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" $k) -}}
{{- fail (printf "config: key %q is not a TOML bare key" $k) -}}
{{- end -}}
{{- if kindIs "map" $v -}}
{{- $tables = append $tables $k -}}
{{- else if not (kindIs "invalid" $v) }}
{{ $k }} = {{ include "vrsky.tomlValue" (dict "v" $v "key" (printf "%s%s" $prefix $k)) }}
{{- end -}}
{{- end -}}
{{- range $k := $tables }}

[{{ printf "%s%s" $prefix $k }}]
{{- include "vrsky.toml" (dict "data" (get $data $k) "prefix" (printf "%s%s." $prefix $k)) -}}
{{- end -}}
{{- end -}}

{{/* One TOML value: a string, boolean, number or list of them. */}}
{{- define "vrsky.tomlValue" -}}
{{- $v := .v -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "vrsky.tomlValue" (dict "v" $e "key" $.key) }}{{ end }}]
{{- else -}}
{{- fail (printf "config: %s: a %s cannot be written as TOML" .key (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* The Secret this chart makes (admin token, secrets key, database URL, creds, CAs). */}}
{{- define "vrsky.secretName" -}}
{{- include "vrsky.fullname" . -}}
{{- end -}}

{{/*
Where one secret value comes from: (dict "item" .Values.secrets.adminToken "ctx" $).
Output: JSON {"name": Secret, "key": key, "set": bool}. An existingSecret wins; else
a value (or, for generate: true items, a generated one) in the chart's own Secret.
*/}}
{{- define "vrsky.secretRef" -}}
{{- $item := .item -}}
{{- if $item.existingSecret -}}
{{- toJson (dict "name" $item.existingSecret "key" $item.key "set" true) -}}
{{- else if or $item.value $item.generate -}}
{{- toJson (dict "name" (include "vrsky.secretName" .ctx) "key" $item.key "set" true) -}}
{{- else -}}
{{- toJson (dict "name" "" "key" $item.key "set" false) -}}
{{- end -}}
{{- end -}}

{{/* Whether the Kubernetes provisioner is on: "true" or "". */}}
{{- define "vrsky.kubernetesProvisioner" -}}
{{- $nats := .Values.config.nats | default dict -}}
{{- if and (kindIs "map" $nats) (eq (toString ($nats.provisioner | default "local")) "kubernetes") }}true{{ end -}}
{{- end -}}

{{/* The platform NATS URL in effect: platformNats.url, else the nats-platform chart's client Service. */}}
{{- define "vrsky.platformUrl" -}}
{{- if .Values.platformNats.url -}}
{{- .Values.platformNats.url -}}
{{- else -}}
{{- printf "nats://%s.%s.svc.%s:4222" .Values.platformNats.serviceName (.Values.platformNats.namespace | default .Release.Namespace) .Values.clusterDomain -}}
{{- end -}}
{{- end -}}

{{/* Mount paths of the files the runtime reads. */}}
{{- define "vrsky.paths" -}}
config: /etc/vrsky/config/vrsky.toml
dataDir: /var/lib/vrsky
platformCreds: /etc/vrsky/platform-nats/runtime.creds
platformCa: /etc/vrsky/platform-nats-ca/ca.crt
tenantCa: /etc/vrsky/tenant-nats-ca/ca.crt
{{- end -}}

{{/*
The configuration tree written to vrsky.toml: .Values.config with the keys the chart owns
(addresses, data dir, mounted files) set from the other values. Setting one of those in
.Values.config fails, naming the value to set instead. Secrets (admin_token,
security.secrets_key, database_url) come from the environment (VRSKY_*), never the file.
*/}}
{{- define "vrsky.configTree" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $paths := include "vrsky.paths" . | fromYaml -}}
{{- range $k := list "cluster" "nats" "security" "state" -}}
{{- if not (kindIs "map" (get $cfg $k | default dict)) -}}
{{- fail (printf "config.%s must be a table (of the runtime's %s.* keys), got %s" $k $k (toJson (get $cfg $k))) -}}
{{- end -}}
{{- end -}}
{{- if not (kindIs "map" ((get $cfg "nats" | default dict).kubernetes | default dict)) -}}
{{- fail (printf "config.nats.kubernetes must be a table (of the runtime's nats.kubernetes.* keys), got %s" (toJson $cfg.nats.kubernetes)) -}}
{{- end -}}
{{- $owned := dict
    "http_addr" "ports.http"
    "grpc_addr" "ports.grpc / grpc.enabled"
    "data_dir" "persistence (the data dir is mounted at /var/lib/vrsky)"
    "admin_token" "secrets.adminToken"
    "database_url" "secrets.databaseUrl" -}}
{{- range $k, $instead := $owned -}}
{{- if hasKey $cfg $k -}}
{{- fail (printf "config.%s is set by the chart: use %s instead" $k $instead) -}}
{{- end -}}
{{- end -}}
{{- $cluster := $cfg.cluster | default dict -}}
{{- if hasKey $cluster "node_id" -}}
{{- fail "config.cluster.node_id is set by the chart: each pod's name (VRSKY_NODE_ID)" -}}
{{- end -}}
{{- if hasKey $cluster "advertise_url" -}}
{{- fail "config.cluster.advertise_url is set by the chart: each pod's name under the headless Service" -}}
{{- end -}}
{{- $nats := $cfg.nats | default dict -}}
{{- range $k := list "platform_url" "platform_creds" "platform_ca" -}}
{{- if hasKey $nats $k -}}
{{- fail (printf "config.nats.%s is set by the chart: use platformNats.* instead" $k) -}}
{{- end -}}
{{- end -}}
{{- $security := $cfg.security | default dict -}}
{{- if hasKey $security "secrets_key" -}}
{{- fail "config.security.secrets_key is a secret: use secrets.secretsKey (a value or an existingSecret)" -}}
{{- end -}}
{{- $k8s := $nats.kubernetes | default dict -}}
{{- if hasKey $k8s "ca_file" -}}
{{- fail "config.nats.kubernetes.ca_file is set by the chart: use tenantNats.ca" -}}
{{- end -}}
{{- $_ := set $cfg "http_addr" (printf "0.0.0.0:%d" (int .Values.ports.http)) -}}
{{- if .Values.grpc.enabled -}}
{{- $_ := set $cfg "grpc_addr" (printf "0.0.0.0:%d" (int .Values.ports.grpc)) -}}
{{- end -}}
{{- $_ := set $cfg "data_dir" $paths.dataDir -}}
{{- $state := $cfg.state | default dict -}}
{{- if and (not .Values.platformNats.external) (gt (int ($state.replicas | default 1)) 1) -}}
{{- fail (printf "config.state.replicas is %v, but a platform NATS spawned in the pod (platformNats.external: false) is one server: set config.state.replicas to 1" $state.replicas) -}}
{{- end -}}
{{- if .Values.platformNats.external -}}
{{- $_ := set $nats "platform_url" (include "vrsky.platformUrl" .) -}}
{{- if (include "vrsky.secretRef" (dict "item" .Values.platformNats.creds "ctx" .) | fromJson).set -}}
{{- $_ := set $nats "platform_creds" $paths.platformCreds -}}
{{- end -}}
{{- if (include "vrsky.secretRef" (dict "item" .Values.platformNats.ca "ctx" .) | fromJson).set -}}
{{- $_ := set $nats "platform_ca" $paths.platformCa -}}
{{- end -}}
{{- end -}}
{{- if and (include "vrsky.kubernetesProvisioner" .) (include "vrsky.secretRef" (dict "item" .Values.tenantNats.ca "ctx" .) | fromJson).set -}}
{{- $_ := set $k8s "ca_file" $paths.tenantCa -}}
{{- $_ := set $nats "kubernetes" $k8s -}}
{{- end -}}
{{- $_ := set $cfg "nats" $nats -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "vrsky.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "vrsky.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}
