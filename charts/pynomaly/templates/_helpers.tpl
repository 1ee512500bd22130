{{/* vim: set filetype=mustache: */}}

{{/* ---- names and labels ------------------------------------------------------------------ */}}

{{- define "pynomaly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pynomaly.fullname" -}}
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

{{/* Name of one component's objects: pynomaly.componentName (dict "root" $ "suffix" "worker-detection") */}}
{{- define "pynomaly.componentName" -}}
{{- printf "%s-%s" (include "pynomaly.fullname" .root | trunc 40 | trimSuffix "-") .suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pynomaly.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pynomaly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pynomaly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pynomaly.labels" -}}
helm.sh/chart: {{ include "pynomaly.chart" . }}
{{ include "pynomaly.selectorLabels" . }}
app.kubernetes.io/version: {{ include "pynomaly.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pynomaly
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker" "pool" "detection") */}}
{{- define "pynomaly.componentSelectorLabels" -}}
{{ include "pynomaly.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- if .pool }}
pynomaly.io/pool: {{ .pool }}
{{- end }}
{{- end -}}

{{- define "pynomaly.componentLabels" -}}
{{ include "pynomaly.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- if .pool }}
pynomaly.io/pool: {{ .pool }}
{{- end }}
{{- end -}}

{{- define "pynomaly.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pynomaly.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pynomaly.secretName" -}}
{{- default (printf "%s-secrets" (include "pynomaly.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "pynomaly.configMapName" -}}
{{- printf "%s-config" (include "pynomaly.fullname" .) -}}
{{- end -}}

{{- define "pynomaly.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "pynomaly.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "pynomaly.imageTag" .) -}}
{{- end -}}

{{/* KEDA trigger and formula names: identifiers made from list/topic names. */}}
{{- define "pynomaly.identifier" -}}
{{- $id := regexReplaceAll "[^A-Za-z0-9_]" . "_" -}}
{{- regexReplaceAll "^([0-9])" $id "_${1}" -}}
{{- end -}}

{{/* The Redis lists holding one queue's waiting messages, one per priority step (JSON list). */}}
{{- define "pynomaly.redisLists" -}}
{{- $lists := list -}}
{{- range .root.Values.workers.priority.steps -}}
{{- if eq (int .) 0 -}}
{{- $lists = append $lists $.queue -}}
{{- else -}}
{{- $lists = append $lists (printf "%s%s%d" $.queue $.root.Values.workers.priority.separator (int .)) -}}
{{- end -}}
{{- end -}}
{{- toJson $lists -}}
{{- end -}}

{{- define "pynomaly.kafkaSasl" -}}
{{- hasPrefix "SASL_" .Values.kafka.securityProtocol -}}
{{- end -}}

{{/* Ports of the Kafka bootstrap servers (JSON list of ints), for NetworkPolicy egress. */}}
{{- define "pynomaly.kafkaPorts" -}}
{{- $ports := list -}}
{{- range splitList "," .Values.kafka.bootstrapServers -}}
{{- $hostPort := trim . -}}
{{- if not (regexMatch "^[^:]+:[0-9]+$" $hostPort) -}}
{{- fail (printf "kafka.bootstrapServers: %q is not host:port" $hostPort) -}}
{{- end -}}
{{- $ports = append $ports (int (last (splitList ":" $hostPort))) -}}
{{- end -}}
{{- toJson ($ports | uniq) -}}
{{- end -}}

{{/* Does KEDA's kafka scaler need a TriggerAuthentication (SASL, or a CA to trust)?  "true" or "" */}}
{{- define "pynomaly.kedaKafkaAuth" -}}
{{- if or (eq (include "pynomaly.kafkaSasl" .) "true") .Values.autoscaling.keda.kafkaCaSecret -}}true{{- end -}}
{{- end -}}

{{/* Is a pool (worker or consumer) driven by an autoscaler?  "true" or "" */}}
{{- define "pynomaly.poolAutoscaled" -}}
{{- if or .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled .Values.autoscaling.external -}}true{{- end -}}
{{- end -}}

{{/* Worker pools consuming the notification queue (JSON list of names): SMTP password and egress. */}}
{{- define "pynomaly.notificationPools" -}}
{{- $pools := list -}}
{{- range $name, $pool := .Values.workers.pools -}}
{{- if has $.Values.notifications.queue $pool.queues -}}{{- $pools = append $pools $name -}}{{- end -}}
{{- end -}}
{{- if $pools -}}{{- toJson $pools -}}{{- end -}}
{{- end -}}

{{/* ---- trained models (models.*) ------------------------------------------------------------ */}}

{{/* Where the model store's claim is mounted; PYNOMALY_MODEL_STORE is dir:<this> with store=persistentVolume. */}}
{{- define "pynomaly.modelsPath" -}}/var/lib/pynomaly/models{{- end -}}

{{- define "pynomaly.modelStoreSetting" -}}
{{- if eq .Values.models.store "persistentVolume" -}}dir:{{ include "pynomaly.modelsPath" . }}{{- else -}}redis{{- end -}}
{{- end -}}

{{- define "pynomaly.modelsClaimName" -}}
{{- default (include "pynomaly.componentName" (dict "root" . "suffix" "models")) .Values.models.persistentVolume.existingClaim -}}
{{- end -}}

{{/* How a worker pool uses the model store: (dict "root" $ "pool" poolValues) -> "write", "read" or "". */}}
{{- define "pynomaly.workerModelAccess" -}}
{{- $m := .root.Values.models -}}
{{- $access := "" -}}
{{- range .pool.queues -}}
{{- if has . $m.writerQueues -}}{{- $access = "write" -}}{{- else if and (has . $m.readerQueues) (ne $access "write") -}}{{- $access = "read" -}}{{- end -}}
{{- end -}}
{{- $access -}}
{{- end -}}

{{/* The claim's mount for an access ("read" or "write"); nothing with store=redis: (dict "root" $ "access" ...) */}}
{{- define "pynomaly.modelsMount" -}}
{{- if and .access (eq .root.Values.models.store "persistentVolume") -}}
- name: models
  mountPath: {{ include "pynomaly.modelsPath" .root }}
  readOnly: {{ eq .access "read" }}
{{- end -}}
{{- end -}}

{{- define "pynomaly.modelsVolume" -}}
{{- if and .access (eq .root.Values.models.store "persistentVolume") -}}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "pynomaly.modelsClaimName" .root }}
{{- end -}}
{{- end -}}

{{/* ---- render-time guards ----------------------------------------------------------------- */}}

{{- define "pynomaly.validate" -}}
{{- $v := .Values -}}
{{- if and $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled -}}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are both true: choose one (KEDA creates its own HPA, two autoscalers must never drive the same Deployment)" -}}
{{- end -}}
{{- if and $v.autoscaling.external (or $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled) -}}
{{- fail "autoscaling.external is true (another tool owns the pools' autoscalers): set autoscaling.keda.enabled and autoscaling.hpa.enabled to false" -}}
{{- end -}}
{{- if not $v.redis.host -}}
{{- fail "redis.host is required: the host name of your Redis master (the chart does not deploy Redis)" -}}
{{- end -}}
{{- if not $v.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers is required: host:port[,host:port] of your Kafka brokers (the chart does not deploy Kafka)" -}}
{{- end -}}
{{- $_ := include "pynomaly.kafkaPorts" . -}}
{{- if and (eq (include "pynomaly.kafkaSasl" .) "true") (not $v.kafka.saslUsername) -}}
{{- fail (printf "kafka.saslUsername is required with kafka.securityProtocol=%s" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if not $v.secrets.existingSecret -}}
{{- $missing := list -}}
{{- range $field := list "redisPassword" "apiKeys" "webhookSecret" -}}
{{- if not (get $v.secrets $field) -}}{{- $missing = append $missing (printf "secrets.%s" $field) -}}{{- end -}}
{{- end -}}
{{- if and (eq (include "pynomaly.kafkaSasl" .) "true") (not $v.secrets.kafkaSaslPassword) -}}
{{- $missing = append $missing "secrets.kafkaSaslPassword" -}}
{{- end -}}
{{- if $missing -}}
{{- fail (printf "no credentials: set secrets.existingSecret to a Secret with the keys %s, %s, %s (and %s with SASL), or set %s (there are no default passwords)" $v.secrets.keys.redisPassword $v.secrets.keys.apiKeys $v.secrets.keys.webhookSecret $v.secrets.keys.kafkaSaslPassword (join ", " $missing)) -}}
{{- end -}}
{{- end -}}
{{- if and $v.flower.enabled (not $v.flower.basicAuth.existingSecret) -}}
{{- fail (printf "flower.enabled needs flower.basicAuth.existingSecret: a Secret whose key %s holds user:password pairs (comma-separated, passwords of 12+ characters), e.g. `kubectl create secret generic pynomaly-flower --from-literal=%s=\"admin:$(openssl rand -base64 24)\"`; Flower is never served without authentication" $v.flower.basicAuth.secretKey $v.flower.basicAuth.secretKey) -}}
{{- end -}}
{{- if and $v.encryption.enabled (not $v.encryption.existingSecret) -}}
{{- fail (printf "encryption.enabled needs encryption.existingSecret: a Secret whose key %s holds the keys file, one base64 key of 32 random bytes per line (make one with `openssl rand -base64 32`); the chart never generates an encryption key" $v.encryption.secretKey) -}}
{{- end -}}
{{- if and $v.smtp.username (not $v.secrets.existingSecret) (not $v.secrets.smtpPassword) -}}
{{- fail (printf "smtp.username is set but there is no SMTP password: set secrets.existingSecret to a Secret with the key %s, or set secrets.smtpPassword" $v.secrets.keys.smtpPassword) -}}
{{- end -}}
{{- if and $v.smtp.host $v.networkPolicy.enabled (not (or $v.smtp.allowTo.cidrs $v.smtp.allowTo.podSelector $v.smtp.allowTo.namespaceSelector)) -}}
{{- fail (printf "smtp.allowTo is required with smtp.host=%s and networkPolicy.enabled: give the SMTP server's CIDRs (smtp.allowTo.cidrs, e.g. 203.0.113.25/32) or a relay's labels; egress is never opened to every destination" $v.smtp.host) -}}
{{- end -}}
{{- if not (include "pynomaly.notificationPools" .) -}}
{{- fail (printf "notifications.queue %q is consumed by no worker pool (workers.pools.*.queues): notifications would never be delivered" $v.notifications.queue) -}}
{{- end -}}
{{- if ge (int $v.settings.taskSoftTimeLimit) (int $v.settings.taskTimeLimit) -}}
{{- fail (printf "settings.taskSoftTimeLimit (%d) must be below settings.taskTimeLimit (%d)" (int $v.settings.taskSoftTimeLimit) (int $v.settings.taskTimeLimit)) -}}
{{- end -}}
{{- /* The app refuses to start otherwise (a job's data never outlives the job): fail at render, not in every pod. */ -}}
{{- if gt (int64 $v.settings.jobDataTtlSeconds) (int64 $v.settings.resultTtlSeconds) -}}
{{- fail (printf "settings.jobDataTtlSeconds (%d) must not exceed settings.resultTtlSeconds (%d); 0 keeps a job's data as long as the job" (int64 $v.settings.jobDataTtlSeconds) (int64 $v.settings.resultTtlSeconds)) -}}
{{- end -}}
{{- if and $v.api.ingress.enabled (not $v.api.ingress.host) -}}
{{- fail "api.ingress.host is required when api.ingress.enabled is true" -}}
{{- end -}}
{{- if and $v.api.autoscaling.enabled (gt (int $v.api.autoscaling.minReplicas) (int $v.api.autoscaling.maxReplicas)) -}}
{{- fail (printf "api.autoscaling: minReplicas (%d) > maxReplicas (%d)" (int $v.api.autoscaling.minReplicas) (int $v.api.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- $autoscaled := eq (include "pynomaly.poolAutoscaled" .) "true" -}}
{{- range $kind, $pools := dict "workers" $v.workers.pools "consumers" $v.consumers.pools -}}
{{- range $name, $pool := $pools -}}
{{- if and $autoscaled (gt (int $pool.minReplicas) (int $pool.maxReplicas)) -}}
{{- fail (printf "%s.pools.%s: minReplicas (%d) > maxReplicas (%d)" $kind $name (int $pool.minReplicas) (int $pool.maxReplicas)) -}}
{{- end -}}
{{- if and $v.autoscaling.hpa.enabled (lt (int $pool.minReplicas) 1) -}}
{{- fail (printf "%s.pools.%s: minReplicas 0 needs KEDA (autoscaling.keda.enabled); an HPA cannot scale to zero" $kind $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.models.store "persistentVolume") (not $v.models.persistentVolume.existingClaim) (not (has "ReadWriteMany" $v.models.persistentVolume.accessModes)) -}}
{{- fail (printf "models.persistentVolume.accessModes %v: the model store is mounted by the API, the worker pools and the scorers on several nodes at once, so its claim must be ReadWriteMany (a StorageClass offering it: NFS, CephFS, EFS, Azure Files, Filestore...), or keep models.store=redis" $v.models.persistentVolume.accessModes) -}}
{{- end -}}
{{- range $v.models.consumerPools -}}
{{- if not (hasKey $v.consumers.pools .) -}}
{{- fail (printf "models.consumerPools: %q is not a consumer pool (consumers.pools)" .) -}}
{{- end -}}
{{- end -}}
{{- range $name, $pool := $v.consumers.pools -}}
{{- $partitions := 0 -}}
{{- range $pool.topics -}}{{- $partitions = max $partitions (int .partitions) -}}{{- end -}}
{{- if gt (int $pool.maxReplicas) $partitions -}}
{{- fail (printf "consumers.pools.%s: maxReplicas (%d) exceeds the largest partition count of its topics (%d); extra consumers would idle" $name (int $pool.maxReplicas) $partitions) -}}
{{- end -}}
{{- if and (not $autoscaled) (gt (int $pool.replicas) $partitions) -}}
{{- fail (printf "consumers.pools.%s: replicas (%d) exceeds the largest partition count of its topics (%d)" $name (int $pool.replicas) $partitions) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---- pod parts shared by every Deployment ------------------------------------------------ */}}

{{- define "pynomaly.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podIdentity.uid }}
runAsGroup: {{ .Values.podIdentity.gid }}
fsGroup: {{ .Values.podIdentity.gid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pynomaly.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podIdentity.uid }}
runAsGroup: {{ .Values.podIdentity.gid }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level settings: (dict "root" $ "component" $componentValues) */}}
{{- define "pynomaly.podSpecCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "pynomaly.serviceAccountName" $root }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- include "pynomaly.podSecurityContext" $root | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with (default $root.Values.scheduling.nodeSelector .component.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.scheduling.tolerations .component.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.scheduling.affinity .component.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.scheduling.topologySpreadConstraints .component.topologySpreadConstraints) }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Environment every container gets: Redis URL composed from the Secret, Kafka SASL password. */}}
{{- define "pynomaly.commonEnv" -}}
{{ include "pynomaly.baseEnv" . }}
{{- if eq (include "pynomaly.kafkaSasl" .) "true" }}
- name: PYNOMALY_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "pynomaly.secretName" . }}
      key: {{ .Values.secrets.keys.kafkaSaslPassword }}
{{- end }}
{{- end -}}

{{/* commonEnv without the Kafka SASL password: HOME and the Redis URL (Flower needs only the broker). */}}
{{- define "pynomaly.baseEnv" -}}
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: REDIS_USERNAME
  value: {{ .Values.redis.username | quote }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "pynomaly.secretName" . }}
      key: {{ .Values.secrets.keys.redisPassword }}
- name: PYNOMALY_REDIS_URL
  value: {{ printf "%s://$(REDIS_USERNAME):$(REDIS_PASSWORD)@%s:%d/%d" (ternary "rediss" "redis" .Values.redis.tls) .Values.redis.host (int .Values.redis.port) (int .Values.redis.db) | quote }}
{{- end -}}

{{/* The encryption keys file of the API and the workers (callers check encryption.existingSecret). */}}
{{- define "pynomaly.encryptionEnv" -}}
- name: PYNOMALY_ENCRYPTION_KEYS_FILE
  value: /etc/pynomaly/encryption/{{ .Values.encryption.secretKey }}
{{- end -}}

{{- define "pynomaly.encryptionMount" -}}
- name: encryption-keys
  mountPath: /etc/pynomaly/encryption
  readOnly: true
{{- end -}}

{{- define "pynomaly.encryptionVolume" -}}
- name: encryption-keys
  secret:
    secretName: {{ .Values.encryption.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.encryption.secretKey }}
        path: {{ .Values.encryption.secretKey }}
{{- end -}}

{{/* Annotations that roll pods when configuration or credentials change. */}}
{{- define "pynomaly.checksumAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ printf "%s\n%s" (include (print .Template.BasePath "/secret.yaml") .) .Values.secrets.existingSecret | sha256sum }}
{{- end -}}

{{/* A worker or consumer Deployment: (dict "root" $ "component" "worker"|"consumer" "name" poolName
     "pool" poolValues "defaults" workers|consumers values "args" container args "grace" seconds
     "extraEnv" list "encryption" bool: mount the encryption keys file
     "models" "write"|"read"|"": mount the model store's claim (store=persistentVolume)) */}}
{{- define "pynomaly.backgroundDeployment" -}}
{{- $root := .root -}}
{{- $sel := dict "root" $root "component" .component "pool" .name -}}
{{- $metricsPort := ternary (int $root.Values.metrics.port) 0 $root.Values.metrics.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "pynomaly.componentName" (dict "root" $root "suffix" (printf "%s-%s" .component .name)) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "pynomaly.componentLabels" $sel | nindent 4 }}
spec:
  {{- if not (include "pynomaly.poolAutoscaled" $root) }}
  replicas: {{ .pool.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "pynomaly.componentSelectorLabels" $sel | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "pynomaly.componentSelectorLabels" $sel | nindent 8 }}
        {{- if $root.Values.metrics.enabled }}
        pynomaly.io/metrics: "true"
        {{- end }}
      annotations:
        {{- include "pynomaly.checksumAnnotations" $root | nindent 8 }}
        {{- with .defaults.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- include "pynomaly.podSpecCommon" (dict "root" $root "component" .pool) | nindent 6 }}
      terminationGracePeriodSeconds: {{ .grace }}
      containers:
        - name: {{ .component }}
          image: {{ include "pynomaly.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml (prepend .args "pynomaly") | nindent 12 }}
          securityContext:
            {{- include "pynomaly.containerSecurityContext" $root | nindent 12 }}
          envFrom:
            - configMapRef:
                name: {{ include "pynomaly.configMapName" $root }}
          env:
            {{- include "pynomaly.commonEnv" $root | nindent 12 }}
            - name: PYNOMALY_HEARTBEAT_DIR
              value: /var/run/pynomaly
            - name: PYNOMALY_METRICS_PORT
              value: {{ $metricsPort | quote }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- if and .encryption $root.Values.encryption.existingSecret }}
            {{- include "pynomaly.encryptionEnv" $root | nindent 12 }}
            {{- end }}
          {{- if $root.Values.metrics.enabled }}
          ports:
            - name: metrics
              containerPort: {{ $metricsPort }}
              protocol: TCP
          {{- end }}
          startupProbe:
            exec:
              command: ["pynomaly", "healthcheck", "--max-age", {{ .defaults.heartbeatMaxAgeSeconds | quote }}]
            periodSeconds: 10
            timeoutSeconds: 10
            failureThreshold: 30
          livenessProbe:
            exec:
              command: ["pynomaly", "healthcheck", "--max-age", {{ .defaults.heartbeatMaxAgeSeconds | quote }}]
            periodSeconds: 30
            timeoutSeconds: 10
            failureThreshold: 3
          readinessProbe:
            exec:
              command: ["pynomaly", "healthcheck", "--max-age", {{ .defaults.heartbeatMaxAgeSeconds | quote }}]
            periodSeconds: 30
            timeoutSeconds: 10
            failureThreshold: 2
          resources:
            {{- toYaml (default .defaults.resources .pool.resources) | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: heartbeat
              mountPath: /var/run/pynomaly
            {{- if and .encryption $root.Values.encryption.existingSecret }}
            {{- include "pynomaly.encryptionMount" $root | nindent 12 }}
            {{- end }}
            {{- with include "pynomaly.modelsMount" (dict "root" $root "access" .models) }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 512Mi
        - name: heartbeat
          emptyDir:
            medium: Memory
            sizeLimit: 1Mi
        {{- if and .encryption $root.Values.encryption.existingSecret }}
        {{- include "pynomaly.encryptionVolume" $root | nindent 8 }}
        {{- end }}
        {{- with include "pynomaly.modelsVolume" (dict "root" $root "access" .models) }}
        {{- . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/*
KEDA's cooldownPeriod only governs the last replica (scaling to zero); below max the HPA's scale-down
window does.  Both wait the same, so "cooldown" means one thing.
*/}}
{{- define "pynomaly.kedaScaleDown" -}}
horizontalPodAutoscalerConfig:
  behavior:
    scaleDown:
      stabilizationWindowSeconds: {{ .cooldownPeriod | int }}
{{- end }}
