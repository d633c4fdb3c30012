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

{{- define "runbot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "runbot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ----- Executors ----- */}}

{{/*
RUNBOT_SANDBOX as "on" or "off". A bare on/off in a values file arrives as a boolean (YAML 1.1),
so booleans are accepted too; anything else fails rendering.
*/}}
{{- define "runbot.sandbox" -}}
{{- $value := .Values.sandbox -}}
{{- if kindIs "bool" $value -}}
{{- ternary "on" "off" $value -}}
{{- else if has (toString $value) (list "on" "off") -}}
{{- toString $value -}}
{{- else -}}
{{- fail (printf "sandbox must be \"on\" or \"off\", not %q: off lets every template's code read runbot's secrets, so it is only ever set on purpose." (toString $value)) -}}
{{- end -}}
{{- end -}}

{{/* "true" when runbot's pod runs engines itself, in the sandbox: it then needs localSandbox. */}}
{{- define "runbot.sandboxed" -}}
{{- if and (eq (toString .Values.executor) "local") (eq (include "runbot.sandbox" .) "on") }}true{{ end -}}
{{- end -}}

{{/* The namespace of the Jobs (and the Role): kubernetes.namespace, else the release's. */}}
{{- define "runbot.jobNamespace" -}}
{{- default .Release.Namespace .Values.kubernetes.namespace -}}
{{- end -}}

{{/* The URL Job pods call back on: kubernetes.callbackUrl, else this release's Service. */}}
{{- define "runbot.callbackUrl" -}}
{{- if .Values.kubernetes.callbackUrl -}}
{{- .Values.kubernetes.callbackUrl -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%d" (include "runbot.fullname" .) .Release.Namespace (int .Values.service.port) -}}
{{- end -}}
{{- end -}}

{{/*
RUNBOT_ALLOWED_HOSTS: config.allowedHosts, plus (executor=kubernetes) the callback URL's host,
which the Job pods send as Host and runbot would otherwise answer with a 400.
*/}}
{{- define "runbot.allowedHosts" -}}
{{- $hosts := list -}}
{{- range $name := splitList "," (toString (.Values.config.allowedHosts | default "")) -}}
{{- if trim $name }}{{ $hosts = append $hosts (trim $name) }}{{ end -}}
{{- end -}}
{{- if eq (toString .Values.executor) "kubernetes" -}}
{{- $callback := (urlParse (include "runbot.callbackUrl" .)).hostname -}}
{{- $public := (urlParse (toString (.Values.config.publicUrl | default ""))).hostname -}}
{{- if and $callback (ne $callback $public) (not (has $callback $hosts)) -}}
{{- $hosts = append $hosts $callback -}}
{{- end -}}
{{- end -}}
{{- join "," $hosts -}}
{{- end -}}

{{/*
The executor's values, checked: a typo would otherwise start a runbot that refuses to run, or
runs engines where nobody meant them to.
*/}}
{{- define "runbot.validateExecutor" -}}
{{- $executor := toString .Values.executor -}}
{{- if not (has $executor (list "local" "kubernetes")) -}}
{{- fail (printf "executor must be \"local\" or \"kubernetes\", not %q." $executor) -}}
{{- end -}}
{{- $_ := include "runbot.sandbox" . -}}
{{- if eq $executor "kubernetes" -}}
{{- range $key := list "serviceAccount" "cpu" "memory" -}}
{{- if not (index $.Values.kubernetes $key) -}}
{{- fail (printf "executor=kubernetes needs kubernetes.%s (each run's pod uses it)." $key) -}}
{{- end -}}
{{- end -}}
{{- $callback := include "runbot.callbackUrl" . -}}
{{- if not (or (hasPrefix "http://" $callback) (hasPrefix "https://" $callback)) -}}
{{- fail (printf "kubernetes.callbackUrl must be an http:// or https:// URL, not %q." $callback) -}}
{{- end -}}
{{- if not .Values.serviceAccount.create -}}
{{- if not .Values.serviceAccount.name -}}
{{- fail "executor=kubernetes binds a Role to runbot's ServiceAccount: set serviceAccount.create=true, or serviceAccount.name to an existing one." -}}
{{- end -}}
{{- end -}}
{{- end -}}
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
{{- include "runbot.validateExecutor" . -}}
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
