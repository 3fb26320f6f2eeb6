{{/*
Names. Kubernetes names are at most 63 characters (DNS label).
*/}}
{{- define "pressured.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pressured.fullname" -}}
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

{{- define "pressured.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pressured.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pressured.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pressured.labels" -}}
helm.sh/chart: {{ include "pressured.chart" . }}
{{ include "pressured.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end -}}

{{- define "pressured.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pressured.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Node mode runs the Debian image that carries bcc; cluster mode the slim non-root one.
*/}}
{{- define "pressured.image" -}}
{{- if eq .Values.mode "node" -}}
{{- printf "%s:%s" .Values.image.privileged.repository (.Values.image.privileged.tag | default .Chart.AppVersion) -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
Checks the schema cannot make with a clear message. Included by the ConfigMap, which every
release renders.
*/}}
{{- define "pressured.validate" -}}
{{- if not (has .Values.mode (list "node" "cluster")) -}}
{{- fail (printf "mode: must be node or cluster (got %v); a sidecar is not deployed by this chart, see docs/kubernetes.md" .Values.mode) -}}
{{- end -}}
{{- if .Values.rbac.create -}}
{{- range $i, $action := (.Values.config.actions | default list) -}}
{{- if and (kindIs "map" $action) (eq (toString $action.type) "k8s-event") (not $.Values.actions.events) -}}
{{- fail (printf "config.actions[%d]: type k8s-event needs actions.events=true (events create permission)" $i) -}}
{{- end -}}
{{- if and (kindIs "map" $action) (eq (toString $action.type) "evict") (not $.Values.actions.eviction) -}}
{{- fail (printf "config.actions[%d]: type evict needs actions.eviction=true (pods/eviction create permission)" $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.s3.enabled (not .Values.s3.bucket) -}}
{{- fail "s3.bucket: required when s3.enabled is true" -}}
{{- end -}}
{{- end -}}

{{/*
The daemon's config.yaml: the free-form `config` value with what the chart owns laid over it
(mode, metrics port, Lua scripts directory, S3 storage, node mode's state_dir unless
config.state_dir is given), so the file and the pod spec agree.
With actions.events on, a k8s-event action is added unless config.actions has one: Events on
the pods are the default, and one value turns them off with their RBAC.
*/}}
{{- define "pressured.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $source := get $cfg "source" | default dict -}}
{{- $_ := set $source "mode" .Values.mode -}}
{{- $_ = set $cfg "source" $source -}}
{{- $metrics := get $cfg "metrics" | default dict -}}
{{- $_ = set $metrics "port" (int .Values.metrics.port) -}}
{{- $_ = set $cfg "metrics" $metrics -}}
{{- if .Values.actions.events -}}
{{- $actions := get $cfg "actions" | default list -}}
{{- $hasEvent := false -}}
{{- range $actions -}}
{{- if and (kindIs "map" .) (eq (toString .type) "k8s-event") -}}{{- $hasEvent = true -}}{{- end -}}
{{- end -}}
{{- if not $hasEvent -}}
{{- $_ = set $cfg "actions" (append $actions (dict "type" "k8s-event")) -}}
{{- end -}}
{{- end -}}
{{- if include "pressured.nodeState" . -}}
{{- $_ = set $cfg "state_dir" (include "pressured.stateDirMount" .) -}}
{{- end -}}
{{- if .Values.luaScripts -}}
{{- $plugins := get $cfg "plugins" | default dict -}}
{{- $lua := get $plugins "lua" | default dict -}}
{{- $_ = set $lua "scripts_dir" "/etc/pressured/lua" -}}
{{- $_ = set $plugins "lua" $lua -}}
{{- $_ = set $cfg "plugins" $plugins -}}
{{- end -}}
{{- if .Values.s3.enabled -}}
{{- $storage := get $cfg "storage" | default dict -}}
{{- $s3 := get $storage "s3" | default dict -}}
{{- $_ = set $storage "type" "s3" -}}
{{- $_ = set $s3 "bucket" .Values.s3.bucket -}}
{{- with .Values.s3.region -}}{{- $_ = set $s3 "region" . -}}{{- end -}}
{{- with .Values.s3.prefix -}}{{- $_ = set $s3 "prefix" . -}}{{- end -}}
{{- with .Values.s3.endpointUrl -}}{{- $_ = set $s3 "endpoint_url" . -}}{{- end -}}
{{- $_ = set $storage "s3" $s3 -}}
{{- $_ = set $cfg "storage" $storage -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
Where node mode mounts stateDir.hostPath: the kill journal and counters (config state_dir).
Beside the emptyDir at /var/lib/pressured (spool, local storage), not over it: those are
pod-lifetime data and would otherwise pile up on the host.
*/}}
{{- define "pressured.stateDirMount" -}}
/var/lib/pressured/state
{{- end -}}

{{/*
"true" when the chart gives node mode its state_dir: stateDir.hostPath is set and
config.state_dir is not (a state_dir of the user's own is mounted by the user's extraVolumes).
*/}}
{{- define "pressured.nodeState" -}}
{{- if and (eq .Values.mode "node") .Values.stateDir.hostPath (not (hasKey (.Values.config | default dict) "state_dir")) -}}
true
{{- end -}}
{{- end -}}

{{/*
Mode defaults for the keys whose null means "the mode's default" (values.yaml).
*/}}
{{- define "pressured.containerSecurityContext" -}}
{{- if not (kindIs "invalid" .Values.securityContext) -}}
{{- toYaml .Values.securityContext -}}
{{- else if eq .Values.mode "node" -}}
privileged: true
runAsUser: 0
readOnlyRootFilesystem: true
{{- else -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
{{- end -}}
{{- end -}}

{{- define "pressured.podSecurityContext" -}}
{{- if not (kindIs "invalid" .Values.podSecurityContext) -}}
{{- toYaml .Values.podSecurityContext -}}
{{- else if eq .Values.mode "cluster" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- end -}}

{{- define "pressured.tolerations" -}}
{{- if not (kindIs "invalid" .Values.tolerations) -}}
{{- toYaml .Values.tolerations -}}
{{- else if eq .Values.mode "node" -}}
- operator: Exists
{{- end -}}
{{- end -}}

{{- define "pressured.priorityClassName" -}}
{{- if not (kindIs "invalid" .Values.priorityClassName) -}}
{{- .Values.priorityClassName -}}
{{- else if eq .Values.mode "node" -}}
system-node-critical
{{- end -}}
{{- end -}}

{{/*
The pod template shared by the DaemonSet (node) and the Deployment (cluster).
*/}}
{{- define "pressured.podTemplate" -}}
{{- $node := eq .Values.mode "node" -}}
metadata:
  labels:
    {{- include "pressured.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # A changed config or script rolls the pods: the daemon reads its config once, at start.
    checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "pressured.serviceAccountName" . }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $node }}
  # The host's PID namespace: signals reach the processes of every container on the node, and
  # /proc shows them for pid -> cgroup -> pod mapping.
  hostPID: true
  {{- end }}
  {{- with (include "pressured.priorityClassName" .) }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with (include "pressured.podSecurityContext" .) }}
  securityContext:
    {{- . | nindent 4 }}
  {{- end }}
  containers:
    - name: pressured
      image: {{ include "pressured.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: ["run", "-c", "/etc/pressured/config.yaml"]
      env:
        - name: PRESSURED_MODE
          value: {{ .Values.mode | quote }}
        # Also set for `kubectl exec ... pressured <command>`, which then finds the same file.
        - name: PRESSURED_CONFIG
          value: /etc/pressured/config.yaml
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: POD_UID
          valueFrom:
            fieldRef:
              fieldPath: metadata.uid
        {{- if and .Values.s3.enabled .Values.s3.existingSecret }}
        - name: AWS_ACCESS_KEY_ID
          valueFrom:
            secretKeyRef:
              name: {{ .Values.s3.existingSecret }}
              key: AWS_ACCESS_KEY_ID
        - name: AWS_SECRET_ACCESS_KEY
          valueFrom:
            secretKeyRef:
              name: {{ .Values.s3.existingSecret }}
              key: AWS_SECRET_ACCESS_KEY
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
      # The bcc probe compiles for tens of seconds at start; the startup probe gives it 5 min
      # before liveness takes over.
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: 5
        failureThreshold: 60
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: 20
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: 10
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "pressured.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/pressured
          readOnly: true
        # The root filesystem is read-only: the spool, local storage and state go here.
        - name: state
          mountPath: /var/lib/pressured
        - name: tmp
          mountPath: /tmp
        {{- if include "pressured.nodeState" . }}
        # The kill journal and counters outlive the pod: a restarted daemon lists its earlier
        # kills again at /v1/state and reports the kills it missed while down.
        - name: node-state
          mountPath: {{ include "pressured.stateDirMount" . }}
        {{- end }}
        {{- if $node }}
        # Writable, though nothing is changed: arming a PSI trigger writes its spec to
        # memory.pressure and a v1 threshold to cgroup.event_control, and the kernel refuses
        # both (EROFS) on a read-only mount.
        - name: cgroup
          mountPath: /sys/fs/cgroup
        - name: kmsg
          mountPath: /dev/kmsg
          readOnly: true
        - name: tracefs
          mountPath: /sys/kernel/tracing
          readOnly: true
        {{- if .Values.mountKernelSources }}
        - name: lib-modules
          mountPath: /lib/modules
          readOnly: true
        - name: usr-src
          mountPath: /usr/src
          readOnly: true
        {{- end }}
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "pressured.fullname" . }}
        items:
          - key: config.yaml
            path: config.yaml
          {{- range $name, $_ := .Values.luaScripts }}
          - key: {{ $name | quote }}
            path: {{ printf "lua/%s" $name | quote }}
          {{- end }}
    - name: state
      emptyDir: {}
    - name: tmp
      emptyDir: {}
    {{- if include "pressured.nodeState" . }}
    - name: node-state
      hostPath:
        path: {{ .Values.stateDir.hostPath | quote }}
        type: DirectoryOrCreate
    {{- end }}
    {{- if $node }}
    # Every container's cgroup: memory.current/usage, memory.events, memory.pressure.
    - name: cgroup
      hostPath:
        path: /sys/fs/cgroup
        type: Directory
    # Kernel log: the OOM killer's report names the victim, its cgroup and its RSS.
    - name: kmsg
      hostPath:
        path: /dev/kmsg
        type: CharDevice
    # tracefs: the id of the oom:mark_victim tracepoint for perf_event_open.
    - name: tracefs
      hostPath:
        path: /sys/kernel/tracing
        type: Directory
    {{- if .Values.mountKernelSources }}
    # Kernel headers for bcc's compile (/lib/modules/$(uname -r)/build -> /usr/src/...).
    - name: lib-modules
      hostPath:
        path: /lib/modules
        type: Directory
    - name: usr-src
      hostPath:
        path: /usr/src
        type: Directory
    {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (include "pressured.tolerations" .) }}
  tolerations:
    {{- . | nindent 4 }}
  {{- end }}
{{- end -}}
