{{/*
Names, labels and the escape hatches shared by every template of the chart.
*/}}

{{/* The chart's name, or nameOverride. `nats-platform` is what
deploy/monitoring/prometheus.yml's vrsky-platform-nats job discovers. */}}
{{- define "nats-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name (pods are "<fullname>-<N>"). */}}
{{- define "nats-platform.fullname" -}}
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

{{- define "nats-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The StatefulSet's governing Service: the routes' DNS names. */}}
{{- define "nats-platform.headlessServiceName" -}}
{{- printf "%s-headless" (include "nats-platform.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels. The component `platform-nats` is what the network policies select. */}}
{{- define "nats-platform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nats-platform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: platform-nats
{{- end -}}

{{- define "nats-platform.labels" -}}
{{ include "nats-platform.selectorLabels" . }}
app.kubernetes.io/part-of: vrsky
app.kubernetes.io/version: {{ .Values.container.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "nats-platform.chart" . }}
{{- with .Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An image from {registry, repository, tag, pullPolicy} with the global.image defaults. */}}
{{- define "nats-platform.image" -}}
{{- $registry := .image.registry | default .ctx.Values.global.image.registry -}}
{{- $ref := printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion | toString) -}}
{{- if $registry }}{{ $ref = printf "%s/%s" (trimSuffix "/" $registry) $ref }}{{ end -}}
image: {{ $ref | quote }}
{{- with (.image.pullPolicy | default .ctx.Values.global.image.pullPolicy) }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end -}}

{{- define "nats-platform.imagePullSecrets" -}}
{{- with .Values.global.image.pullSecretNames }}
imagePullSecrets:
{{- range . }}
  - name: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Secret holding auth.conf: auth.existingSecret, else the chart's own. */}}
{{- define "nats-platform.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "nats-platform.fullname" .)) -}}
{{- end -}}

{{/* Whether the server has an auth block: "true" or "". */}}
{{- define "nats-platform.hasAuth" -}}
{{- if or .Values.auth.existingSecret .Values.auth.config }}true{{ end -}}
{{- end -}}

{{/* ---- merge/patch escape hatches (kept identical in every chart: deploy/helm/check.py) ---- */}}

{{/*
nats-platform.merge: deep-merges .merge into .obj (Helm's mergeOverwrite: maps merge, lists and
scalars of .merge replace). The NATS chart's `merge` convention. Output: JSON {"v": obj}.
*/}}
{{- define "nats-platform.merge" -}}
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
nats-platform.patch: applies .patch, a JSON Patch (RFC 6902: add, remove, replace, move, copy,
test; paths are JSON pointers, "-" appends to a list), to .obj. The NATS chart's `patch`
convention. Output: JSON {"v": obj}. A patch that does not apply fails the render with
the operation's index and path.
*/}}
{{- define "nats-platform.patch" -}}
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
{{- $path := include "nats-platform.jsonpointer" (dict "pointer" $op.path "where" $where) | fromJson -}}
{{- if has $op.op (list "add" "replace" "test") -}}
{{- if not (hasKey $op "value") }}{{ fail (printf "%s: %s needs a value" $where $op.op) }}{{ end -}}
{{- end -}}
{{- $value := $op.value -}}
{{- if has $op.op (list "move" "copy") -}}
{{- if not (hasKey $op "from") }}{{ fail (printf "%s: %s needs from" $where $op.op) }}{{ end -}}
{{- $from := include "nats-platform.jsonpointer" (dict "pointer" $op.from "where" $where) | fromJson -}}
{{- $value = get (include "nats-platform.jsonpatch.get" (dict "node" $doc "segs" $from.segs "where" $where) | fromJson) "v" -}}
{{- if eq $op.op "move" -}}
{{- if hasPrefix (printf "%s/" $op.from) (printf "%s/" $op.path) -}}
{{- if ne $op.from $op.path }}{{ fail (printf "%s: cannot move %s into itself" $where $op.from) }}{{ end -}}
{{- end -}}
{{- $doc = get (include "nats-platform.jsonpatch.put" (dict "node" $doc "segs" $from.segs "op" "remove" "value" nil "where" $where) | fromJson) "v" -}}
{{- end -}}
{{- end -}}
{{- if eq $op.op "test" -}}
{{- $have := get (include "nats-platform.jsonpatch.get" (dict "node" $doc "segs" $path.segs "where" $where) | fromJson) "v" -}}
{{- $want := get (toJson (dict "v" $value) | fromJson) "v" -}}
{{- if not (deepEqual $have $want) -}}
{{- fail (printf "%s: test of %s failed: %s is not %s" $where $op.path (toJson $have) (toJson $want)) -}}
{{- end -}}
{{- else -}}
{{- $put := ternary "add" $op.op (has $op.op (list "move" "copy")) -}}
{{- $doc = get (include "nats-platform.jsonpatch.put" (dict "node" $doc "segs" $path.segs "op" $put "value" $value "where" $where) | fromJson) "v" -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "v" $doc) -}}
{{- end -}}

{{/* A JSON pointer ("" or "/a/b~1c") as its unescaped segments: JSON {"segs": [...]}. */}}
{{- define "nats-platform.jsonpointer" -}}
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
{{- define "nats-platform.jsonpatch.get" -}}
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
{{- define "nats-platform.jsonpatch.put" -}}
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
{{- $child := get (include "nats-platform.jsonpatch.put" (dict "node" (index $node $seg) "segs" $rest "op" .op "value" .value "where" .where) | fromJson) "v" -}}
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
{{- $child := get (include "nats-platform.jsonpatch.put" (dict "node" (index $node $i) "segs" $rest "op" .op "value" .value "where" .where) | fromJson) "v" -}}
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
nats-platform.object: renders one Kubernetes object. .yaml is the object as YAML (a template's
output); .hatch is its {merge, patch} values; .what names them in errors. The object is
deep-merged with hatch.merge, then patched with hatch.patch (in that order).
*/}}
{{- define "nats-platform.object" -}}
{{- $obj := .yaml | fromYaml -}}
{{- if hasKey $obj "Error" -}}
{{- fail (printf "%s: the template's YAML does not parse: %s" .what (index $obj "Error")) -}}
{{- end -}}
{{- $hatch := .hatch | default dict -}}
{{- $obj = get (include "nats-platform.merge" (dict "obj" $obj "merge" $hatch.merge "what" .what) | fromJson) "v" -}}
{{- $obj = get (include "nats-platform.patch" (dict "obj" $obj "patch" $hatch.patch "what" .what) | fromJson) "v" -}}
{{- toYaml $obj -}}
{{- end -}}
{{/* ---- end of merge/patch ---- */}}
