{{/* The chart name, or nameOverride. */}}
{{- define "ztdns.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: fullnameOverride, else the release name when it
already contains the chart name ("ztdns" for `helm install ztdns`), else
release-chart.
*/}}
{{- define "ztdns.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "ztdns.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select the agent's pods; never change them in an upgrade. */}}
{{- define "ztdns.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ztdns.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "ztdns.labels" -}}
{{ include "ztdns.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ztdns.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Paths the agent uses inside its container. The socket directory is mounted at
the same path as on the host: the agent writes the socket's path into the CNI
configuration, and the plugin runs on the host.
*/}}
{{- define "ztdns.socketDir" -}}/var/run/ztdns{{- end }}
{{- define "ztdns.bpffs" -}}/sys/fs/bpf/ztdns{{- end }}
{{- define "ztdns.cniBinMount" -}}/host/opt/cni/bin{{- end }}
{{- define "ztdns.cniConfMount" -}}/host/etc/cni/net.d{{- end }}
{{- define "ztdns.procMount" -}}/host/proc{{- end }}

{{/*
The capabilities of a container that loads, attaches or removes the capture
path; deploy/README.md says why each is needed, and test/deploy runs the
agent with these alone.
*/}}
{{- define "ztdns.captureCapabilities" -}}
- NET_ADMIN
- SYS_ADMIN
- SYS_PTRACE
{{- end }}

{{/*
ztdns.goMemLimit is the agent's GOMEMLIMIT for a memory limit (the argument):
80% of it in bytes. Empty when the limit is not a whole number of bytes,
Ki, Mi or Gi; the chart then gives the limit itself.
*/}}
{{- define "ztdns.goMemLimit" -}}
{{- $limit := toString . -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 -}}
{{- $n := regexFind "^[0-9]+" $limit -}}
{{- $unit := trimPrefix $n $limit -}}
{{- if and $n (hasKey $units $unit) -}}
{{- div (mul (atoi $n) (get $units $unit) 4) 5 -}}
{{- end -}}
{{- end }}
