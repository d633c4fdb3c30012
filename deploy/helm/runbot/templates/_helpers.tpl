{{/* Names and labels. */}}
{{- define "runbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "runbot.fullname" -}}
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

{{- define "runbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "runbot.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "runbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
"true" when runbot will use PostgreSQL: config.databaseUrl is a postgresql URL, or (with no
config.databaseUrl) the database URL comes from existingSecret. A secret's content cannot be read
at render time, so a databaseUrl key is trusted to hold a PostgreSQL URL; deploy/README.md says so.
*/}}
{{- define "runbot.usesPostgres" -}}
{{- $url := toString (.Values.config.databaseUrl | default "") -}}
{{- if $url -}}
{{- if hasPrefix "postgresql" $url }}true{{ end -}}
{{- else if and .Values.existingSecret .Values.secretKeys.databaseUrl -}}
true
{{- end -}}
{{- end -}}

{{/*
Refuse configurations that would run but lose data or misbehave. Rendered by deployment.yaml, so
`helm install`, `helm upgrade` and `helm template` all stop with the message.
*/}}
{{- define "runbot.validate" -}}
{{- if not .Values.existingSecret -}}
{{- fail "existingSecret is required: create a Secret with the GitHub App private key, webhook secret and database URL (see deploy/README.md) and pass --set existingSecret=<name>." -}}
{{- end -}}
{{- if not .Values.config.githubAppId -}}
{{- fail "config.githubAppId is required: the GitHub App's numeric ID (quote it: --set-string config.githubAppId=123456)." -}}
{{- end -}}
{{- if not .Values.config.publicUrl -}}
{{- fail "config.publicUrl is required: the https:// address GitHub and browsers reach runbot at (webhooks and links use it)." -}}
{{- end -}}
{{- $postgres := include "runbot.usesPostgres" . -}}
{{- if and (gt (int .Values.replicaCount) 1) (not $postgres) -}}
{{- fail (printf "replicaCount=%d needs PostgreSQL: set secretKeys.databaseUrl (a key of existingSecret holding postgresql+psycopg://...) or config.databaseUrl. SQLite cannot be shared between pods." (int .Values.replicaCount)) -}}
{{- end -}}
{{- if and (not $postgres) (not .Values.persistence.existingClaim) -}}
{{- fail "without PostgreSQL runbot keeps its SQLite database and the engine state in the data dir, and an emptyDir loses them on every restart (the cloud resources stay, unmanaged). Use PostgreSQL, or set persistence.existingClaim with replicaCount=1." -}}
{{- end -}}
{{- range $key := list "githubPrivateKey" "githubWebhookSecret" "githubClientSecret" "apiToken" "sessionSecret" "metricsToken" -}}
{{- if index $.Values.config $key -}}
{{- fail (printf "config.%s would put a secret into a ConfigMap: store it in existingSecret and name its key in secretKeys.%s." $key $key) -}}
{{- end -}}
{{- end -}}
{{- if hasKey .Values.config "dataDir" -}}
{{- fail "set the top-level dataDir value, not config.dataDir: the chart mounts its volumes there." -}}
{{- end -}}
{{- if .Values.policy -}}
{{- if not (kindIs "string" .Values.policy) -}}
{{- fail "policy must be YAML text (policy: |), not a mapping: runbot names the line of a problem in that text." -}}
{{- end -}}
{{- if .Values.config.policyFile -}}
{{- fail "policy and config.policyFile are both set: use policy (the chart mounts it), or leave it empty and mount your own file at config.policyFile." -}}
{{- end -}}
{{- if hasKey (fromYaml .Values.policy) "Error" -}}
{{- fail (printf "policy is not valid YAML: %s (check it with `runbot policy check`)." (get (fromYaml .Values.policy) "Error")) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.config.githubPrivateKeyPath .Values.secretKeys.githubPrivateKey -}}
{{- fail "config.githubPrivateKeyPath and secretKeys.githubPrivateKey are both set; runbot accepts one key source: set secretKeys.githubPrivateKey to \"\"." -}}
{{- end -}}
{{- /*
Shutdown takes up to: the preStop sleep, the HTTP drain (engine cancel grace + 15 s, uvicorn's
graceful timeout in `runbot serve`), the engine's SIGINT wait (engine cancel grace) and its SIGTERM
wait (10 s). 60 s covers the fixed parts with slack.
*/ -}}
{{- $cancelGrace := int (.Values.config.engineCancelGrace | default 60) -}}
{{- $needed := add (int .Values.preStopSleepSeconds) (mul 2 $cancelGrace) 60 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds=%d leaves interrupted engines no time to stop cleanly: use at least %d (preStopSleepSeconds + 2 x engineCancelGrace + 60)." (int .Values.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- end -}}
