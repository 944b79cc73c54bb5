{{/* Names and labels shared by every template. */}}

{{- define "vision-maas.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vision-maas.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vision-maas.labels" -}}
{{ include "vision-maas.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vision-maas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vision-maas.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vision-maas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "vision-maas.gpuImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-gpu" $tag) .Values.image.gpuTag) -}}
{{- end -}}

{{/* The pod spec parts every Ray pod shares: service account, security, volumes. */}}
{{- define "vision-maas.podCommon" -}}
serviceAccountName: {{ include "vision-maas.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: ray-tmp
    emptyDir: {}
{{- end -}}

{{/* Environment of every Ray container: Serve replicas may run on any pod. */}}
{{- define "vision-maas.env" -}}
- {name: RAY_USAGE_STATS_ENABLED, value: "0"}
{{- range $name, $value := .Values.serveEnv }}
- {name: {{ $name }}, value: {{ $value | quote }}}
{{- end }}
{{- with .Values.apiKeys.existingSecret }}
- name: VISION_MAAS_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.apiKeys.secretKey }}
{{- end }}
{{- end -}}

{{/* Raylet liveness, as KubeRay's default probe: the local raylet answers. */}}
{{- define "vision-maas.rayletProbe" -}}
exec:
  command: ["bash", "-c", "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success"]
initialDelaySeconds: 30
periodSeconds: 5
timeoutSeconds: 2
failureThreshold: 120
{{- end -}}

{{/* A worker group (cpu or gpu); dict with root, name, group, image. */}}
{{- define "vision-maas.workerGroup" -}}
{{- $root := .root -}}
{{- $group := .group -}}
- groupName: {{ .name }}
  replicas: {{ $group.replicas }}
  minReplicas: {{ $group.minReplicas }}
  maxReplicas: {{ $group.maxReplicas }}
  rayStartParams:
    {{- toYaml $group.rayStartParams | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "vision-maas.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ printf "worker-%s" .name }}
    spec:
      {{- include "vision-maas.podCommon" $root | nindent 6 }}
      {{- with $group.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $group.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $group.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: ray-worker
          image: {{ .image }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - {name: serve, containerPort: 8000, protocol: TCP}
            - {name: metrics, containerPort: 8080, protocol: TCP}
          resources:
            requests:
              {{- toYaml $group.resources.requests | nindent 14 }}
            limits:
              {{- toYaml $group.resources.limits | nindent 14 }}
              {{- if .gpus }}
              nvidia.com/gpu: {{ .gpus }}
              {{- end }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          env:
            {{- include "vision-maas.env" $root | nindent 12 }}
          livenessProbe:
            {{- include "vision-maas.rayletProbe" $root | nindent 12 }}
          readinessProbe:
            # The Serve proxy on this node answers: KubeRay's default for RayService workers.
            exec:
              command: ["bash", "-c", "wget -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && wget -T 2 -q -O- http://localhost:8000/-/healthz | grep success"]
            initialDelaySeconds: 10
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 1
          volumeMounts:
            - {name: ray-tmp, mountPath: /tmp/ray}
{{- end -}}
