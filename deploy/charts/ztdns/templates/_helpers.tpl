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
80% of it in bytes, rounded down. It reads a Kubernetes quantity of bytes:
digits with an optional fraction and decimal exponent (helm reads a number
in a values file as a float: 2.68435456e+08), then no suffix or one of Ki
Mi Gi Ti Pi Ei, k M G T P E. Anything else fails the render: falling back
to the limit itself would leave the runtime no room below it. A fraction of
a byte counts as a byte, as Kubernetes rounds it.
*/}}
{{- define "ztdns.goMemLimit" -}}
{{- $limit := toString . -}}
{{- $re := "^([0-9]+)(?:\\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$" -}}
{{- if not (regexMatch $re $limit) -}}
{{- fail (printf "resources.limits.memory %q: the chart sets GOMEMLIMIT to 80%% of it and reads bytes as digits with an optional fraction and exponent, then no suffix or one of Ki Mi Gi Ti Pi Ei k M G T P E" $limit) -}}
{{- end -}}
{{- $units := dict "" 1 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "E" 1000000000000000000 -}}
{{- $frac := regexReplaceAll $re $limit "${2}" -}}
{{- $exp := regexReplaceAll $re $limit "${3}" | default "0" | atoi -}}
{{- $unit := get $units (regexReplaceAll $re $limit "${4}") | int64 -}}
{{- /* The limit is mantissa × unit × 10^scale bytes. */ -}}
{{- $digits := regexReplaceAll "^0+" (printf "%s%s" (regexReplaceAll $re $limit "${1}") $frac) "" -}}
{{- $scale := sub $exp (len $frac) | int64 -}}
{{- if or (gt (len $digits) 18) (gt $scale 18) (lt $scale -18) -}}
{{- fail (printf "resources.limits.memory %q: too many digits or too large an exponent for the chart to compute GOMEMLIMIT" $limit) -}}
{{- end -}}
{{- $mantissa := $digits | default "0" | atoi | int64 -}}
{{- $pow := 1 | int64 -}}
{{- $approx := mulf $mantissa $unit -}}
{{- range until (ternary $scale (sub 0 $scale) (ge $scale 0) | int) -}}
{{- $pow = mul $pow 10 -}}
{{- end -}}
{{- $approx = ternary (mulf $approx $pow) (divf $approx $pow) (ge $scale 0) -}}
{{- if or (gt (mulf $mantissa $unit) 9e18) (gt $approx 1e18) -}}
{{- fail (printf "resources.limits.memory %q: too large for the chart to compute GOMEMLIMIT" $limit) -}}
{{- end -}}
{{- $bytes := ternary (mul $mantissa $unit $pow) (div (sub (add (mul $mantissa $unit) $pow) 1) $pow) (ge $scale 0) -}}
{{- div (mul $bytes 4) 5 -}}
{{- end }}

{{/*
ztdns.uninstallContainer is a container running `ztdns uninstall`: the
capture path's programs, pins and ztdns0 interface, and with "cni" the
plugin's CNI entry. Arguments: "root" (the chart's context), "name", "cni".
*/}}
{{- define "ztdns.uninstallContainer" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: {{ include "ztdns.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command:
    - ztdns
    - uninstall
    - --bpffs={{ include "ztdns.bpffs" $root }}
    {{- if .cni }}
    - --cni-bin-dir={{ include "ztdns.cniBinMount" $root }}
    - --cni-conf-dir={{ include "ztdns.cniConfMount" $root }}
    {{- end }}
  securityContext:
    privileged: false
    runAsUser: 0
    runAsGroup: 0
    runAsNonRoot: false
    readOnlyRootFilesystem: true
    capabilities:
      drop:
        - ALL
      add:
        {{- include "ztdns.captureCapabilities" $root | nindent 8 }}
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      memory: 64Mi
  volumeMounts:
    - name: bpffs
      mountPath: /sys/fs/bpf
      mountPropagation: HostToContainer
    - name: cgroup
      mountPath: /sys/fs/cgroup
      readOnly: true
    {{- if .cni }}
    - name: cni-bin-dir
      mountPath: {{ include "ztdns.cniBinMount" $root }}
    - name: cni-conf-dir
      mountPath: {{ include "ztdns.cniConfMount" $root }}
    {{- end }}
{{- end }}
