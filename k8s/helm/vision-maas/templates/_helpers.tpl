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

{{/*
The Serve config the RayService runs (serveConfigV2): `.Values.serve` with every application that
lists its models (import_path deployments.app:build_app) expanded as deployments/topology.py
expands a config: the catalogue application (same name and route prefix, its Ingress and
RateLimiter entries), then one application per model, `<app>-<model>`, whose route prefix is the
exact path of the model's hot verb, and with training on one per `training.one_hop` trained model
(deployments.app:build_trained, at its `:predict`). The verb is the registry's: files/verbs.yaml, written by
`make k8s`. Other applications pass through. A test holds this to deployments.topology.expand.
*/}}
{{- define "vision-maas.serveConfig" -}}
{{- $verbs := .Files.Get "files/verbs.yaml" | fromYaml -}}
{{- $shared := list "runtime_env" "logging_config" "external_scaler_enabled" -}}
{{- $catalogueDeployments := list "Ingress" "RateLimiter" "StoreModels" "TrainingJobs" -}}
{{- $apps := list -}}
{{- range $app := .Values.serve.applications -}}
{{- if ne $app.import_path "deployments.app:build_app" -}}
{{- $apps = append $apps (deepCopy $app) -}}
{{- else -}}
{{- $name := $app.name -}}
{{- $prefix := "/" -}}
{{- if hasKey $app "route_prefix" }}{{ $prefix = $app.route_prefix }}{{ end -}}
{{- $args := deepCopy (default (dict) $app.args) -}}
{{- $models := default (list) $args.models -}}
{{- $entries := dict -}}
{{- range $d := default (list) $app.deployments }}{{ $_ := set $entries $d.name (deepCopy $d) }}{{ end -}}
{{- $names := list -}}
{{- range $m := $models }}{{ $names = append $names $m.name }}{{ end -}}
{{- $training := default (dict) $args.training -}}
{{- $trained := list -}}
{{- if $training.enabled }}{{ $trained = default (list) $training.one_hop }}{{ end -}}
{{- $names = concat $names $trained -}}
{{- $unknown := list -}}
{{- range $entry, $_ := $entries -}}
{{- if not (or (has $entry $names) (has $entry $catalogueDeployments)) }}{{ $unknown = append $unknown $entry }}{{ end -}}
{{- end -}}
{{- if $unknown -}}
{{- fail (printf "application %q: deployments [%s] name no configured model" $name (join ", " $unknown)) -}}
{{- end -}}
{{- $common := dict -}}
{{- range $key := $shared }}{{ if hasKey $app $key }}{{ $_ := set $common $key (deepCopy (get $app $key)) }}{{ end }}{{ end -}}
{{- $catalogue := dict "name" $name "route_prefix" $prefix "import_path" "deployments.app:build_catalogue" -}}
{{- $_ := set $catalogue "args" (set (deepCopy $args) "application" $name) -}}
{{- range $key, $value := $common }}{{ $_ := set $catalogue $key (deepCopy $value) }}{{ end -}}
{{- $kept := list -}}
{{- range $d := $catalogueDeployments }}{{ if hasKey $entries $d }}{{ $kept = append $kept (get $entries $d) }}{{ end }}{{ end -}}
{{- if $kept }}{{ $_ := set $catalogue "deployments" $kept }}{{ end -}}
{{- $apps = append $apps $catalogue -}}
{{- range $m := $models -}}
{{- $entry := get $entries $m.name -}}
{{- $refused := list -}}
{{- range $key := list "max_ongoing_requests" "max_queued_requests" }}{{ if and $entry (hasKey $entry $key) }}{{ $refused = append $refused $key }}{{ end }}{{ end -}}
{{- if $refused -}}
{{- fail (printf "model %q: %s would answer overload in Serve's plain text; set user_config.max_requests instead (the replica answers 503 in the API's JSON)" $m.name (join ", " $refused)) -}}
{{- end -}}
{{- $registry := default $m.name $m.model -}}
{{- if not (hasKey $verbs $registry) -}}
{{- fail (printf "model %q: %q is not a registry model (files/verbs.yaml lists them)" $m.name $registry) -}}
{{- end -}}
{{- $route := printf "%s/v1/models/%s:%s" (regexReplaceAll "/+$" $prefix "") $m.name (get $verbs $registry) -}}
{{- $one := dict "name" (printf "%s-%s" $name $m.name) "route_prefix" $route "import_path" "deployments.app:build_model" -}}
{{- $modelArgs := set (deepCopy $args) "models" (list (deepCopy $m)) -}}
{{- $_ := set $one "args" (set $modelArgs "application" $name) -}}
{{- range $key, $value := $common }}{{ $_ := set $one $key (deepCopy $value) }}{{ end -}}
{{- if hasKey $entries $m.name }}{{ $_ := set $one "deployments" (list $entry) }}{{ end -}}
{{- $apps = append $apps $one -}}
{{- end -}}
{{- range $t := $trained -}}
{{- $route := printf "%s/v1/models/%s:predict" (regexReplaceAll "/+$" $prefix "") $t -}}
{{- $one := dict "name" (printf "%s-%s" $name $t) "route_prefix" $route "import_path" "deployments.app:build_trained" -}}
{{- $trainedArgs := set (deepCopy $args) "training" (set (deepCopy $training) "one_hop" (list $t)) -}}
{{- $_ := set $one "args" (set $trainedArgs "application" $name) -}}
{{- range $key, $value := $common }}{{ $_ := set $one $key (deepCopy $value) }}{{ end -}}
{{- if hasKey $entries $t }}{{ $_ := set $one "deployments" (list (get $entries $t)) }}{{ end -}}
{{- $apps = append $apps $one -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml (set (deepCopy .Values.serve) "applications" $apps) -}}
{{- end -}}
