{{/*
vrsky.validate: fails the render for every configuration the runtime would refuse at
start that the values show (Config::validate in runtime/src/config.rs, the claim-check
rules in runtime/src/objects/config.rs, `serve`'s admin token, the secrets key's form),
so a release never gets pods that crash-loop on their configuration. Each message names
the value to set. Called by templates/configmap.yaml.

1. What only the chart's values can give: platformNats.creds with an external platform,
   tenantNats.ca with the kubernetes provisioner, an admin token.
2. The Secrets' values the chart holds, where it sees them (not an existingSecret's).
3. The pods' names (cluster.node_id) and ports.
4. The rendered vrsky.toml against files/config-schema.yaml: no unknown key, each value
   of its type and in its range.
5. The rules between keys.
*/}}
{{- define "vrsky.validate" -}}
{{- $v := .Values -}}

{{- /* 1. Required values. */ -}}
{{- if and $v.platformNats.external (not (include "vrsky.secretRef" (dict "item" $v.platformNats.creds "ctx" .) | fromJson).set) -}}
{{- fail "platformNats.creds.value (or platformNats.creds.existingSecret) is required with an external platform NATS (platformNats.external: true): the creds file of the runtime's user, nats.platform_creds, without which the runtime refuses to start" -}}
{{- end -}}
{{- if and (include "vrsky.kubernetesProvisioner" .) (not (include "vrsky.secretRef" (dict "item" $v.tenantNats.ca "ctx" .) | fromJson).set) -}}
{{- $tlsSecret := (($v.config.nats | default dict).kubernetes | default dict).tls_secret | default "vrsky-tenant-nats-tls" -}}
{{- fail (printf "tenantNats.ca.value (or tenantNats.ca.existingSecret) is required with the kubernetes provisioner (config.nats.provisioner: kubernetes): the CA that signed the tenant servers' certificate (Secret %s in %s), nats.kubernetes.ca_file" $tlsSecret (include "vrsky.tenantNamespace" .)) -}}
{{- end -}}
{{- $admin := $v.secrets.adminToken -}}
{{- if not $admin.existingSecret -}}
{{- if $admin.value -}}
{{- if lt (len (toString $admin.value)) 16 -}}
{{- fail (printf "secrets.adminToken.value must be at least 16 characters (admin_token), it has %d" (len (toString $admin.value))) -}}
{{- end -}}
{{- else if not $admin.generate -}}
{{- fail "secrets.adminToken.value (or secrets.adminToken.existingSecret, or secrets.adminToken.generate: true) is required: vrsky serve refuses to start without an admin token (admin_token)" -}}
{{- end -}}
{{- end -}}

{{- /* 2. Secret values the chart holds (never echoed). */ -}}
{{- $sealKey := $v.secrets.secretsKey -}}
{{- if and (not $sealKey.existingSecret) $sealKey.value -}}
{{- /* Standard base64 of 32 bytes: 43 characters, the last with its 2 low bits clear, and "=". */ -}}
{{- if not (regexMatch "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$" (trim (toString $sealKey.value))) -}}
{{- fail "secrets.secretsKey.value must be the base64 of 32 random bytes (security.secrets_key; head -c32 /dev/urandom | base64)" -}}
{{- end -}}
{{- end -}}
{{- $db := $v.secrets.databaseUrl -}}
{{- if and (not $db.existingSecret) $db.value -}}
{{- if not (regexMatch "^(postgres://|postgresql://|sqlite:)" (toString $db.value)) -}}
{{- fail "secrets.databaseUrl.value must start with postgres://, postgresql:// or sqlite: (database_url)" -}}
{{- end -}}
{{- end -}}

{{- /* 3. The pods' names are their cluster.node_id (VRSKY_NODE_ID); the ports. */ -}}
{{- $fullname := include "vrsky.fullname" . -}}
{{- if not (regexMatch "^[A-Za-z0-9_-]+$" $fullname) -}}
{{- fail (printf "the pods' names, %s-N, are the runtime's cluster.node_id (VRSKY_NODE_ID), 1 to 64 letters, digits, '-' or '_': set fullnameOverride (or a release name) without other characters" $fullname) -}}
{{- end -}}
{{- $ports := list "http" -}}
{{- if $v.grpc.enabled }}{{ $ports = append $ports "grpc" }}{{ end -}}
{{- range $name := $ports -}}
{{- $p := index $v.ports $name -}}
{{- /* A whole number (from a values file, --set or --set-string), as the templates' `int` reads it. */ -}}
{{- $ok := false -}}
{{- if and (not (kindIs "bool" $p)) (regexMatch "^[0-9]+$" (toString $p)) -}}
{{- if and (ge (int64 $p) 1) (le (int64 $p) 65535) }}{{ $ok = true }}{{ end -}}
{{- end -}}
{{- if not $ok -}}
{{- fail (printf "ports.%s must be a port number, 1 to 65535, got %s" $name (toJson $p)) -}}
{{- end -}}
{{- end -}}
{{- if and $v.grpc.enabled (eq (int64 $v.ports.http) (int64 $v.ports.grpc)) -}}
{{- fail (printf "ports.grpc must differ from ports.http (the gRPC gateway and the HTTP server bind one port each), both are %d" (int64 $v.ports.http)) -}}
{{- end -}}

{{- /* 4. vrsky.toml, key by key. */ -}}
{{- $schema := .Files.Get "files/config-schema.yaml" | fromYaml -}}
{{- if or (not $schema) (hasKey $schema "Error") -}}
{{- fail (printf "the chart's files/config-schema.yaml is missing or not YAML: %v" (get ($schema | default dict) "Error")) -}}
{{- end -}}
{{- $known := dict -}}
{{- range $key, $_ := $schema -}}
{{- $parts := splitList "." $key -}}
{{- range $i, $_ := initial $parts -}}
{{- $_ := set $known (join "." (slice $parts 0 (add1 $i))) true -}}
{{- end -}}
{{- end -}}
{{- $leaves := dict -}}
{{- $tables := dict -}}
{{- include "vrsky.validate.flatten" (dict "node" (include "vrsky.configTree" . | fromJson) "prefix" "" "leaves" $leaves "tables" $tables) -}}
{{- range $t, $_ := $tables -}}
{{- if hasKey $schema $t -}}
{{- fail (printf "config.%s must be %s, not a table" $t (include "vrsky.validate.expected" (get $schema $t))) -}}
{{- else if not (hasKey $known $t) -}}
{{- fail (printf "config.%s is not a configuration key of the runtime (README.md, Configuration), which refuses unknown keys" $t) -}}
{{- end -}}
{{- end -}}
{{- range $key, $val := $leaves -}}
{{- if hasKey $known $key -}}
{{- fail (printf "config.%s must be a table (of the runtime's %s.* keys), got %s" $key $key (toJson $val)) -}}
{{- end -}}
{{- if not (hasKey $schema $key) -}}
{{- fail (printf "config.%s is not a configuration key of the runtime (README.md, Configuration), which refuses unknown keys" $key) -}}
{{- end -}}
{{- $s := get $schema $key -}}
{{- $got := toJson $val -}}
{{- $typed := false -}}
{{- if eq $s.type "uint" -}}
{{- if kindIs "float64" $val -}}
{{- if and (ge $val 0.0) (eq (float64 (int64 $val)) $val) }}{{ $typed = true }}{{ end -}}
{{- end -}}
{{- else if eq $s.type "number" -}}
{{- $typed = kindIs "float64" $val -}}
{{- else if eq $s.type "bool" -}}
{{- $typed = kindIs "bool" $val -}}
{{- else if eq $s.type "string" -}}
{{- $typed = kindIs "string" $val -}}
{{- else if eq $s.type "enum" -}}
{{- if kindIs "string" $val }}{{ $typed = has $val $s.of }}{{ end -}}
{{- else -}}
{{- fail (printf "files/config-schema.yaml: %s has an unknown type %v" $key $s.type) -}}
{{- end -}}
{{- if not $typed -}}
{{- fail (printf "config.%s must be %s, got %s" $key (include "vrsky.validate.expected" $s) $got) -}}
{{- end -}}
{{- $why := "" -}}
{{- if $s.why }}{{ $why = printf " (%s)" $s.why }}{{ end -}}
{{- if or (hasKey $s "min") (hasKey $s "max") -}}
{{- if or (and (hasKey $s "min") (lt (float64 $val) (float64 $s.min))) (and (hasKey $s "max") (gt (float64 $val) (float64 $s.max))) -}}
{{- $range := "" -}}
{{- if and (hasKey $s "min") (hasKey $s "max") -}}
{{- $range = printf "%s to %s" (toJson $s.min) (toJson $s.max) -}}
{{- else if hasKey $s "min" -}}
{{- $range = printf "at least %s" (toJson $s.min) -}}
{{- else -}}
{{- $range = printf "at most %s" (toJson $s.max) -}}
{{- end -}}
{{- fail (printf "config.%s must be %s, got %s%s" $key $range $got $why) -}}
{{- end -}}
{{- end -}}
{{- if and $s.pattern (not (regexMatch $s.pattern $val)) -}}
{{- fail (printf "config.%s must be %s, got %s%s" $key $s.expect $got $why) -}}
{{- end -}}
{{- end -}}

{{- /* 5. Between keys (the runtime's defaults where a key is unset). */ -}}
{{- $eff := dict -}}
{{- range $key := list "claim_check.threshold_bytes" "claim_check.body_bytes_max" "state.message_state_ttl_s" "state.redrive_after_ms" "object_store.kind" "nats.provisioner" "nats.kubernetes.image" -}}
{{- $_ := set $eff $key (ternary (get $leaves $key) (get (get $schema $key) "default") (hasKey $leaves $key)) -}}
{{- end -}}
{{- if lt (float64 (get $eff "claim_check.body_bytes_max")) (float64 (get $eff "claim_check.threshold_bytes")) -}}
{{- fail (printf "config.claim_check.body_bytes_max must be at least config.claim_check.threshold_bytes (%s), got %s" (toJson (get $eff "claim_check.threshold_bytes")) (toJson (get $eff "claim_check.body_bytes_max"))) -}}
{{- end -}}
{{- if ge (div (int64 (get $eff "state.redrive_after_ms")) 1000) (int64 (get $eff "state.message_state_ttl_s")) -}}
{{- fail (printf "config.state.redrive_after_ms must be shorter than config.state.message_state_ttl_s (%s s), got %s ms" (toJson (get $eff "state.message_state_ttl_s")) (toJson (get $eff "state.redrive_after_ms"))) -}}
{{- end -}}
{{- if and (eq (get $eff "object_store.kind") "s3") (not (get $leaves "object_store.bucket")) -}}
{{- fail "config.object_store.bucket is required with config.object_store.kind = s3 (an existing bucket)" -}}
{{- end -}}
{{- if eq (get $eff "nats.provisioner") "kubernetes" -}}
{{- /* runtime/src/nats/process.rs, Version::parse of the tag: [v]MAJOR.MINOR[.PATCH][-+...] */ -}}
{{- $image := get $eff "nats.kubernetes.image" -}}
{{- $tag := regexReplaceAll "^v*" (last (splitList ":" $image)) "" -}}
{{- $ok := false -}}
{{- if regexMatch "^[0-9]+\\.[0-9]+([.][^-+]*)?([-+].*)?$" $tag -}}
{{- $mm := splitList "." (regexReplaceAll "^([0-9]+\\.[0-9]+).*$" $tag "${1}") -}}
{{- $major := atoi (index $mm 0) -}}
{{- $minor := atoi (index $mm 1) -}}
{{- $ok = or (gt $major 2) (and (eq $major 2) (ge $minor 10)) -}}
{{- end -}}
{{- if not $ok -}}
{{- fail (printf "config.nats.kubernetes.image must be tagged with nats-server 2.10 or newer (as nats:2.10-alpine) for the kubernetes provisioner, got %s" (toJson $image)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* What a schema entry wants, for messages: "a whole number (0 or more)", "one of a, b". */}}
{{- define "vrsky.validate.expected" -}}
{{- if eq .type "uint" -}}a whole number (0 or more)
{{- else if eq .type "number" -}}a number
{{- else if eq .type "bool" -}}true or false
{{- else if eq .type "enum" -}}one of {{ join ", " .of }}
{{- else -}}a string
{{- end -}}
{{- end -}}

{{/*
The configuration tree as dotted keys: .leaves gets each value (nulls left out, as the
TOML writer does), .tables each table's key. Both dicts are filled in place.
*/}}
{{- define "vrsky.validate.flatten" -}}
{{- range $k, $val := .node -}}
{{- $key := printf "%s%s" $.prefix $k -}}
{{- if kindIs "map" $val -}}
{{- $_ := set $.tables $key true -}}
{{- include "vrsky.validate.flatten" (dict "node" $val "prefix" (printf "%s." $key) "leaves" $.leaves "tables" $.tables) -}}
{{- else if not (kindIs "invalid" $val) -}}
{{- $_ := set $.leaves $key $val -}}
{{- end -}}
{{- end -}}
{{- end -}}
