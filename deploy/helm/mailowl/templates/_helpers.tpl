{{/*
Names. Every resource name comes from "mailowl.fullname" (or "mailowl.componentName" built on it), so the
chart works with any release name in any namespace: nothing refers to a fixed name.
*/}}

{{- define "mailowl.name" -}}
{{- default .Chart.Name .Values.nameOverride | lower | replace "." "-" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
<release>-<chart>, or <release> alone when it already contains the chart's name; at most 63 characters.
Release names may hold dots and begin with a digit (Helm allows both): dots become dashes, and a leading
digit gets the chart's name in front, so that the result is also a valid Service name (RFC 1035 label).
*/}}
{{- define "mailowl.fullname" -}}
{{- $name := include "mailowl.name" . -}}
{{- $full := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $full = .Values.fullnameOverride -}}
{{- else if contains $name .Release.Name -}}
{{- $full = .Release.Name -}}
{{- else -}}
{{- $full = printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- $full = $full | lower | replace "." "-" -}}
{{- if regexMatch "^[0-9]" $full -}}
{{- $full = printf "%s-%s" $name $full -}}
{{- end -}}
{{- $full | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
<fullname>-<suffix> within a length limit (the fullname is shortened, the suffix kept).
Call with (dict "ctx" $ "suffix" "postgresql" "max" 52).
*/}}
{{- define "mailowl.componentName" -}}
{{- $max := .max | default 63 | int -}}
{{- $base := include "mailowl.fullname" .ctx | trunc (sub $max (add1 (len .suffix)) | int) | trimSuffix "-" -}}
{{- printf "%s-%s" $base .suffix -}}
{{- end -}}

{{/* A StatefulSet's name goes into its pods' controller-revision-hash label (63 characters with a hash):
at most 52. */}}
{{- define "mailowl.postgresql.fullname" -}}
{{- include "mailowl.componentName" (dict "ctx" . "suffix" "postgresql" "max" 52) -}}
{{- end -}}

{{- define "mailowl.postgresql.headless" -}}
{{- include "mailowl.componentName" (dict "ctx" . "suffix" "postgresql-hl" "max" 63) -}}
{{- end -}}

{{- define "mailowl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailowl.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailowl.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels. Each workload's selector names its component, so mailowl's Service never selects the database's
pods and the other way round. */}}
{{- define "mailowl.commonLabels" -}}
helm.sh/chart: {{ include "mailowl.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailowl
{{- end -}}

{{- define "mailowl.labels" -}}
app.kubernetes.io/name: {{ include "mailowl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{ include "mailowl.commonLabels" . }}
{{- end -}}

{{- define "mailowl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailowl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "mailowl.postgresql.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailowl.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: database
{{- end -}}

{{- define "mailowl.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}

{{/* Where the store lives: "external", "postgresql" or "sqlite". */}}
{{- define "mailowl.store" -}}
{{- if or .Values.externalDatabase.url .Values.externalDatabase.existingSecret -}}
external
{{- else if .Values.postgresql.enabled -}}
postgresql
{{- else -}}
sqlite
{{- end -}}
{{- end -}}

{{/* Whether the chart's own Secret has anything to hold. */}}
{{- define "mailowl.secret.needed" -}}
{{- if or (and .Values.auth.token (not .Values.auth.existingSecret))
          (and .Values.externalDatabase.url (not .Values.externalDatabase.existingSecret))
          (and .Values.cortex.apiToken (not .Values.cortex.existingSecret)) -}}
true
{{- end -}}
{{- end -}}

{{/*
Values that cannot work are refused here, with what to do instead. Included by the Deployment, so every
render runs it.
*/}}
{{- define "mailowl.validate" -}}
{{- $store := include "mailowl.store" . -}}
{{- if and (eq $store "sqlite") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) -}}
{{- fail (printf "mailowl: more than one pod (replicaCount=%d, autoscaling.enabled=%t) needs a database that every pod shares: the embedded SQLite on /data cannot be shared between pods. Set externalDatabase.url (or externalDatabase.existingSecret), or postgresql.enabled=true; several replicas also need mailowl's cluster mode (see the chart's README)." (int .Values.replicaCount) (.Values.autoscaling.enabled | default false)) -}}
{{- end -}}
{{- if lt (int .Values.replicaCount) 0 -}}
{{- fail "mailowl: replicaCount must be 0 or more" -}}
{{- end -}}
{{- if and .Values.externalDatabase.url .Values.externalDatabase.existingSecret -}}
{{- fail "mailowl: set only one of externalDatabase.url and externalDatabase.existingSecret" -}}
{{- end -}}
{{- if and (eq $store "external") .Values.postgresql.enabled -}}
{{- fail "mailowl: set either externalDatabase or postgresql.enabled, not both" -}}
{{- end -}}
{{- if and .Values.externalDatabase.url (not (regexMatch "^(mysql\\+asyncmy|mysql\\+aiomysql|mariadb\\+asyncmy|postgresql\\+asyncpg)://" .Values.externalDatabase.url)) -}}
{{- fail "mailowl: externalDatabase.url must be an async SQLAlchemy URL: mysql+asyncmy://USER:PASSWORD@HOST/DB or postgresql+asyncpg://USER:PASSWORD@HOST/DB" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled .Values.postgresql.auth.password (not (regexMatch "^[A-Za-z0-9._~-]+$" .Values.postgresql.auth.password)) -}}
{{- fail "mailowl: postgresql.auth.password may hold only letters, digits and . _ ~ - (it becomes part of the database URL)" -}}
{{- end -}}
{{- if or (not (regexMatch "^[-._a-zA-Z0-9]+$" (.Values.ruleset.file | toString))) (eq .Values.ruleset.file "mailowl.toml") -}}
{{- fail "mailowl: ruleset.file must be a file name (letters, digits, - _ .) other than mailowl.toml, e.g. ruleset.conf or ruleset.toml" -}}
{{- end -}}
{{- if and .Values.postgresql.enabled (not (and (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" .Values.postgresql.auth.username) (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" .Values.postgresql.auth.database))) -}}
{{- fail "mailowl: postgresql.auth.username and postgresql.auth.database may hold only letters, digits and _ (they become part of the database URL)" -}}
{{- end -}}
{{- if and .Values.smtp.enabled (not .Values.smtp.nextHop) -}}
{{- fail "mailowl: smtp.enabled needs smtp.nextHop (HOST:PORT where accepted mail is relayed)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) -}}
{{- fail "mailowl: autoscaling.maxReplicas must not be below autoscaling.minReplicas" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.targetCPUUtilizationPercentage (not (dig "requests" "cpu" "" .Values.resources)) -}}
{{- fail "mailowl: autoscaling on CPU needs resources.requests.cpu (utilization is relative to the request)" -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) -}}
{{- fail "mailowl: set only one of podDisruptionBudget.minAvailable and podDisruptionBudget.maxUnavailable (the other to null)" -}}
{{- end -}}
{{- end -}}
