{{/*
Names, labels, the image, secrets and the environment every Tandem process shares.
Every name the chart gives an object comes from here, so that a selector and what it
selects can never drift apart.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "tandem.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-tandem, or the release name alone when it already says "tandem". */}}
{{- define "tandem.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's object name: (list $ "router") -> <fullname>-router, at most 63 characters
(a Service name is a DNS label). */}}
{{- define "tandem.componentName" -}}
{{- $root := index . 0 }}
{{- printf "%s-%s" (include "tandem.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The RayCluster: KubeRay refuses names over 53 characters (its pods get suffixes). */}}
{{- define "tandem.rayClusterName" -}}
{{- include "tandem.fullname" . | trunc 53 | trimSuffix "-" }}
{{- end }}

{{- define "tandem.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What selects this release's pods; never changes across upgrades (selectors are
immutable). */}}
{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tandem.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tandem.labels" -}}
helm.sh/chart: {{ include "tandem.chart" . }}
{{ include "tandem.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tandem
{{- end }}

{{/* (list $ "router"): the selector labels of one component's pods. */}}
{{- define "tandem.componentSelectorLabels" -}}
{{ include "tandem.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* (list $ "router"): every label of one component's objects and pods. */}}
{{- define "tandem.componentLabels" -}}
{{ include "tandem.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* The Tandem image; the tag defaults to the chart's appVersion. */}}
{{- define "tandem.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The service account of every pod that does not talk to the Kubernetes API: no token
is mounted into them. */}}
{{- define "tandem.serviceAccountName" -}}
{{- include "tandem.fullname" . }}
{{- end }}

{{/* ---------- security contexts ---------- */}}

{{/* The pod security context: non-root uid 1000, seccomp RuntimeDefault (the "restricted"
Pod Security Standard), with .Values.podSecurityContext merged over it. */}}
{{- define "tandem.podSecurityContext" -}}
{{- $base := dict "runAsNonRoot" true "runAsUser" 1000 "runAsGroup" 1000 "fsGroup" 1000 "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- toYaml (mergeOverwrite $base (deepCopy .Values.podSecurityContext)) }}
{{- end }}

{{/* A container's security context: no privilege escalation, no capabilities, a read-only
root filesystem (an emptyDir at /tmp is where processes write), .Values.containerSecurityContext
merged over it. (list $ extra): `extra` (a dict) is merged last. */}}
{{- define "tandem.containerSecurityContext" -}}
{{- $root := index . 0 }}
{{- $extra := index . 1 }}
{{- $base := dict "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "runAsNonRoot" true "capabilities" (dict "drop" (list "ALL")) }}
{{- toYaml (mergeOverwrite $base (deepCopy $root.Values.containerSecurityContext) (deepCopy $extra)) }}
{{- end }}

{{/* The worker containers': RDMA needs IPC_LOCK to pin the memory it registers with the NIC. */}}
{{- define "tandem.workerSecurityContext" -}}
{{- $extra := dict }}
{{- if and .Values.workers.rdma.enabled .Values.workers.rdma.ipcLock }}
{{- $_ := set $extra "capabilities" (dict "drop" (list "ALL") "add" (list "IPC_LOCK")) }}
{{- end }}
{{- $extra = mergeOverwrite $extra (deepCopy .Values.workers.containerSecurityContext) }}
{{- include "tandem.containerSecurityContext" (list . $extra) }}
{{- end }}

{{/* ---------- secrets ---------- */}}

{{- define "tandem.redisSecretName" -}}
{{- include "tandem.componentName" (list . "redis") }}
{{- end }}

{{- define "tandem.apiKeySecretName" -}}
{{- default (include "tandem.componentName" (list . "api-keys")) .Values.router.auth.existingSecret }}
{{- end }}

{{- define "tandem.apiKeySecretKey" -}}
{{- if .Values.router.auth.existingSecret }}{{ .Values.router.auth.secretKey }}{{ else }}api-keys{{ end }}
{{- end }}

{{- define "tandem.clusterTokenSecretName" -}}
{{- default (include "tandem.componentName" (list . "cluster-token")) .Values.clusterToken.existingSecret }}
{{- end }}

{{/* A generated secret value that survives upgrades: the one already in the cluster when
there is one, else a new random one. (dict "root" $ "name" "..." "key" "...") -> base64. */}}
{{- define "tandem.keptSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 40 | b64enc }}
{{- end }}
{{- end }}

{{/* ---------- environment ---------- */}}

{{- define "tandem.redisHost" -}}
{{- printf "%s.%s.svc" (include "tandem.componentName" (list . "redis")) .Release.Namespace }}
{{- end }}

{{/* TANDEM_REDIS_URL, with the password from a Secret: Kubernetes expands $(REDIS_PASSWORD)
when it starts the container, so the password is in no manifest and on no command line. */}}
{{- define "tandem.redisEnv" -}}
{{- if .Values.redis.enabled -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "tandem.redisSecretName" . }}
      key: redis-password
- name: TANDEM_REDIS_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "tandem.redisHost" . }}:6379/0"
{{- else if .Values.redis.external.passwordSecret.name -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.passwordSecret.name }}
      key: {{ .Values.redis.external.passwordSecret.key }}
- name: TANDEM_REDIS_URL
  value: {{ regexReplaceAll "^(rediss?://)" .Values.redis.external.url "${1}:$$(REDIS_PASSWORD)@" | quote }}
{{- else -}}
- name: TANDEM_REDIS_URL
  value: {{ .Values.redis.external.url | quote }}
{{- end }}
{{- end }}

{{/* The port of redis.external.url (6379 when it names none). */}}
{{- define "tandem.externalRedisPort" -}}
{{- $port := regexReplaceAll "^rediss?://[^:/]+(:([0-9]+))?(/.*)?$" .Values.redis.external.url "${2}" }}
{{- default "6379" $port }}
{{- end }}

{{- define "tandem.clusterTokenEnv" -}}
- name: TANDEM_CLUSTER_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "tandem.clusterTokenSecretName" . }}
      key: cluster-token
{{- end }}

{{/* Where libraries write their caches, with a read-only root filesystem: under /tmp
(HF_HOME too: the image points it at /models, which pods mount read-only when at all). */}}
{{- define "tandem.cacheEnv" -}}
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: HF_HOME
  value: /tmp/.cache/huggingface
- name: TRITON_CACHE_DIR
  value: /tmp/.cache/triton
- name: FLASHINFER_WORKSPACE_BASE
  value: /tmp
{{- if .Values.model.name }}
# The model is at an absolute path; this is only where its tokenizer is cached (writable).
- name: TANDEM_MODEL_CACHE
  value: /tmp/tandem-models
{{- end }}
{{- end }}

{{/* ---------- the model ---------- */}}

{{/* The path --model gets: model.name inside the cache, or as it is when absolute. */}}
{{- define "tandem.modelPath" -}}
{{- $name := .Values.model.name }}
{{- if hasPrefix "/" $name }}
{{- $name }}
{{- else if $name }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.cache.mountPath) $name }}
{{- end }}
{{- end }}

{{/* Where the download Job writes, and the file it leaves when it is done. */}}
{{- define "tandem.downloadDir" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.cache.mountPath) (default .Values.model.name .Values.model.download.repo) }}
{{- end }}

{{- define "tandem.downloadMarker" -}}
{{- printf "%s/.tandem-download-complete" (include "tandem.downloadDir" .) }}
{{- end }}

{{- define "tandem.modelClaimName" -}}
{{- default (include "tandem.componentName" (list . "models")) .Values.model.cache.existingClaim }}
{{- end }}

{{/* Volumes of a pod running Tandem: /tmp, and the model cache when there is one. */}}
{{- define "tandem.commonVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .Values.model.cache.enabled }}
- name: model-cache
  persistentVolumeClaim:
    claimName: {{ include "tandem.modelClaimName" . }}
    readOnly: true
{{- end }}
{{- end }}

{{- define "tandem.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.model.cache.enabled }}
- name: model-cache
  mountPath: {{ .Values.model.cache.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Pods that load the model wait for the download Job (when there is one) to finish. */}}
{{- define "tandem.waitForModel" -}}
{{- if .Values.model.download.enabled -}}
- name: wait-for-model
  image: {{ include "tandem.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "-c", 'until [ -e "$MARKER" ]; do echo "waiting for the model download Job ($MARKER)"; sleep 10; done']
  env:
    - name: MARKER
      value: {{ include "tandem.downloadMarker" . | quote }}
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      memory: 64Mi
  securityContext:
    {{- include "tandem.containerSecurityContext" (list . dict) | nindent 4 }}
  volumeMounts:
    {{- include "tandem.commonVolumeMounts" . | nindent 4 }}
{{- end }}
{{- end }}

{{/* ---------- rules the schema cannot state ---------- */}}

{{/* (dict "what" "router" "grace" N "parts" (list (list "drainDelaySeconds" N) ...)):
the grace period must cover the drain, or Kubernetes kills the pod mid-drain. */}}
{{- define "tandem.checkGrace" -}}
{{- $need := 5 }}
{{- $names := list }}
{{- range .parts }}
{{- $need = add $need (index . 1) }}
{{- $names = append $names (printf "%s.%s" $.what (index . 0)) }}
{{- end }}
{{- if lt (int .grace) (int $need) }}
{{- fail (printf "%s.terminationGracePeriodSeconds is %d but must be at least %d (%s + a 5 s margin): Kubernetes kills the pod when the grace period ends, cutting the requests still draining" .what (int .grace) (int $need) (join " + " $names)) }}
{{- end }}
{{- end }}

{{/* (list $ "prefill"): the KV head groups of a group's caches: the larger group's
tensor-parallel size over its own (engine/transfer/heads.py), so a decode rank reads whole
groups from the prefill ranks that hold them. */}}
{{- define "tandem.kvHeadGroups" -}}
{{- $root := index . 0 }}
{{- $p := int $root.Values.workers.prefill.tensorParallelSize }}
{{- $d := int $root.Values.workers.decode.tensorParallelSize }}
{{- div (max $p $d) (int (index $root.Values.workers (index . 1)).tensorParallelSize) }}
{{- end }}

{{/* (list $ "prefill"): one worker group's numbers. */}}
{{- define "tandem.checkGroup" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $g := index $root.Values.workers $key }}
{{- $where := printf "workers.%s" $key }}
{{- if and (gt (int $g.gpus) 0) (lt (int $g.gpus) (int $g.tensorParallelSize)) }}
{{- fail (printf "%s.gpus (%d) must be at least %s.tensorParallelSize (%d)" $where (int $g.gpus) $where (int $g.tensorParallelSize)) }}
{{- end }}
{{- if not (and (le (int $g.minReplicas) (int $g.replicas)) (le (int $g.replicas) (int $g.maxReplicas))) }}
{{- fail (printf "%s: minReplicas (%d) <= replicas (%d) <= maxReplicas (%d) does not hold" $where (int $g.minReplicas) (int $g.replicas) (int $g.maxReplicas)) }}
{{- end }}
{{- end }}

{{/* Every cross-field rule, checked once (templates/validate.yaml). */}}
{{- define "tandem.validate" -}}
{{- include "tandem.checkGroup" (list . "prefill") }}
{{- include "tandem.checkGroup" (list . "decode") }}
{{- $p := int .Values.workers.prefill.tensorParallelSize }}
{{- $d := int .Values.workers.decode.tensorParallelSize }}
{{- if or (mod (max $p $d) $p) (mod (max $p $d) $d) }}
{{- fail (printf "workers.prefill.tensorParallelSize (%d) and workers.decode.tensorParallelSize (%d): one must divide the other (a decode rank reads whole head groups from prefill ranks)" $p $d) }}
{{- end }}
{{- if eq .Values.workers.prefill.groupName .Values.workers.decode.groupName }}
{{- fail (printf "workers.prefill.groupName and workers.decode.groupName are both %q: the groups of a RayCluster need distinct names" .Values.workers.prefill.groupName) }}
{{- end }}
{{- include "tandem.checkGrace" (dict "what" "router" "grace" .Values.router.terminationGracePeriodSeconds "parts" (list (list "drainDelaySeconds" .Values.router.drainDelaySeconds) (list "drainTimeoutSeconds" .Values.router.drainTimeoutSeconds))) }}
{{- include "tandem.checkGrace" (dict "what" "workers" "grace" .Values.workers.terminationGracePeriodSeconds "parts" (list (list "drainTimeoutSeconds" .Values.workers.drainTimeoutSeconds))) }}
{{- if and (not .Values.redis.enabled) (not .Values.redis.external.url) }}
{{- fail "redis.enabled is false: set redis.external.url to the Redis to use" }}
{{- end }}
{{- if and .Values.redis.enabled .Values.redis.external.url }}
{{- fail "redis.external.url is set but so is redis.enabled: set redis.enabled=false to use the external Redis" }}
{{- end }}
{{- $name := .Values.model.name }}
{{- if and $name (not (hasPrefix "/" $name)) (not .Values.model.cache.enabled) }}
{{- fail (printf "model.name %q is a path inside the model cache, but model.cache.enabled is false: enable the cache or give an absolute path" $name) }}
{{- end }}
{{- if .Values.model.download.enabled }}
{{- if or (not $name) (hasPrefix "/" $name) (not .Values.model.cache.enabled) }}
{{- fail "model.download.enabled needs model.cache.enabled and model.name as a path inside the cache (e.g. Qwen/Qwen2.5-7B-Instruct)" }}
{{- end }}
{{- end }}
{{- if and .Values.autoscaler.enabled (eq (int .Values.workers.decode.minReplicas) 0) (not .Values.model.maxModelLen) }}
{{- fail "workers.decode.minReplicas is 0: set model.maxModelLen, so the router can start while no worker is registered" }}
{{- end }}
{{- if and .Values.router.maxRequestsPerKey (not .Values.router.auth.enabled) }}
{{- fail "router.maxRequestsPerKey limits requests per API key: it needs router.auth.enabled" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled .Values.router.auth.enabled (not .Values.router.metrics.public) .Values.router.auth.existingSecret (not .Values.serviceMonitor.apiKeySecret.name) }}
{{- fail "serviceMonitor.enabled with router.auth.existingSecret: set serviceMonitor.apiKeySecret (a Secret key holding one API key), or router.metrics.public=true" }}
{{- end }}
{{- end }}

{{/* ---------- NetworkPolicy pieces (networkpolicy.yaml) ---------- */}}

{{/* (list $ "router"): a peer naming one component's pods. */}}
{{- define "tandem.npPeer" -}}
- podSelector:
    matchLabels:
      {{- include "tandem.componentSelectorLabels" . | nindent 6 }}
{{- end }}

{{/* The rule letting a pod reach the cluster's Redis: ours by selector, an external one by
address (networkPolicy.externalRedisCidrs) and the port in its URL. */}}
{{- define "tandem.npRedisEgress" -}}
{{- if .Values.redis.enabled -}}
- to:
    {{- include "tandem.npPeer" (list . "redis") | nindent 4 }}
  ports:
    - protocol: TCP
      port: 6379
{{- else -}}
- to:
    {{- range .Values.networkPolicy.externalRedisCidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - protocol: TCP
      port: {{ include "tandem.externalRedisPort" . | int }}
{{- end }}
{{- end }}

{{/* DNS, wherever the cluster runs it (kube-dns, NodeLocal DNSCache's link-local address). */}}
{{- define "tandem.npDnsEgress" -}}
- ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end }}
