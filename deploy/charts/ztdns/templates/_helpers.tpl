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
    - --proc-root={{ include "ztdns.procMount" $root }}
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
    # The node's /proc: the marked pods' network namespaces, whose sockets
    # kept connected to the resolver are aborted (their clients reopen and
    # reach their own nameservers).
    - name: host-proc
      mountPath: {{ include "ztdns.procMount" $root }}
      readOnly: true
    {{- if .cni }}
    - name: cni-bin-dir
      mountPath: {{ include "ztdns.cniBinMount" $root }}
    - name: cni-conf-dir
      mountPath: {{ include "ztdns.cniConfMount" $root }}
    {{- end }}
{{- end }}
{{- /* istiod's mesh config ConfigMap, as it names it (pkg/source/kube.MeshConfigMapName). */}}
{{- define "ztdns.meshConfigMap" -}}
{{- $rev := .Values.resolver.istioRevision | default "" -}}
{{- if or (eq $rev "") (eq $rev "default") -}}istio{{- else -}}istio-{{ $rev }}{{- end -}}
{{- end }}
