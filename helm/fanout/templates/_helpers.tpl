{{/*
fanout chart helpers: names, labels and the settings derived from values in one place.
*/}}

{{/* Object name prefix: the release name ("fanout" in the README). */}}
{{- define "fanout.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "fanout.labels" -}}
app.kubernetes.io/name: fanout
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (list $ "dask-scheduler"). */}}
{{- define "fanout.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: fanout
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* The Execution API URL task pods report to: the explicit value, else the api-server Service. */}}
{{- define "fanout.executionApiServerUrl" -}}
{{- .Values.airflow.executionApiServerUrl | default (printf "http://%s-api-server.%s.svc.cluster.local:8080/execution/" .Values.airflow.releaseName .Values.airflow.namespace) -}}
{{- end -}}

{{- define "fanout.schedulerServiceAccount" -}}
{{- .Values.airflow.schedulerServiceAccount | default (printf "%s-scheduler" .Values.airflow.releaseName) -}}
{{- end -}}

{{- define "fanout.apiServerServiceAccount" -}}
{{- .Values.airflow.apiServerServiceAccount | default (printf "%s-api-server" .Values.airflow.releaseName) -}}
{{- end -}}

{{/* A pool selector (k=v,k2=v2, as FANOUT_*_POOL_SELECTOR) as a nodeSelector map. */}}
{{- define "fanout.selectorMap" -}}
{{- $labels := dict -}}
{{- range (splitList "," .) }}{{ $kv := splitn "=" 2 (trim .) }}{{ if $kv._0 }}{{ $_ := set $labels $kv._0 $kv._1 }}{{ end }}{{ end -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* Taints as FANOUT_*_TAINT reads them: key[=value]:Effect,... */}}
{{- define "fanout.taintString" -}}
{{- $items := list -}}
{{- range . }}{{ $items = append $items (printf "%s%s:%s" .key (ternary (printf "=%s" (.value | default "")) "" (hasKey . "value")) .effect) }}{{ end -}}
{{- join "," $items -}}
{{- end -}}

{{/* Tolerations for taints: list of {key, value?, effect}. */}}
{{- define "fanout.tolerations" -}}
{{- range . }}
- key: {{ .key | quote }}
  {{- if hasKey . "value" }}
  operator: Equal
  value: {{ .value | quote }}
  {{- else }}
  operator: Exists
  {{- end }}
  effect: {{ .effect }}
{{- end }}
{{- end -}}

{{/* An image reference: (list repository tag). */}}
{{- define "fanout.image" -}}
{{- printf "%s:%s" (index . 0) (index . 1 | toString) -}}
{{- end -}}

{{/* Where artifacts live (FANOUT_ARTIFACT_ROOT). */}}
{{- define "fanout.artifactRoot" -}}
{{- if eq .Values.storage.mode "pvc" }}{{ .Values.storage.pvc.mountPath }}{{ else }}{{ .Values.storage.objectStore.root }}{{ end -}}
{{- end -}}

{{/* The Dask scheduler Service and address tasks connect to. */}}
{{- define "fanout.daskSchedulerName" -}}
{{- printf "%s-dask-scheduler" (include "fanout.fullname" .) -}}
{{- end -}}

{{- define "fanout.daskSchedulerAddress" -}}
{{- printf "tcp://%s.%s.svc.cluster.local:%v" (include "fanout.daskSchedulerName" .) .Release.Namespace .Values.dask.scheduler.port -}}
{{- end -}}

{{/* Pod security context shared by fanout pods: the image's non-root airflow user. */}}
{{- define "fanout.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 50000
runAsGroup: 0
fsGroup: 0
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "fanout.containerSecurityContext" -}}
allowPrivilegeEscalation: false
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Storage wiring of pods that touch artifacts (Dask): env sources, volumes, mounts. */}}
{{- define "fanout.storageEnvFrom" -}}
- configMapRef:
    name: {{ .Values.settingsConfigMapName }}
{{- if and (eq .Values.storage.mode "objectStore") .Values.storage.objectStore.existingSecret }}
- secretRef:
    name: {{ .Values.storage.objectStore.existingSecret }}
{{- end }}
{{- end -}}

{{- define "fanout.storageVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if eq .Values.storage.mode "pvc" }}
- name: artifacts
  mountPath: {{ .Values.storage.pvc.mountPath }}
{{- end }}
{{- end -}}

{{- define "fanout.storageVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if eq .Values.storage.mode "pvc" }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ .Values.storage.pvc.name }}
{{- end }}
{{- end -}}

{{/* A Kubernetes quantity ("8Gi", "512M", "1e9", 2) in bytes, as an integer. */}}
{{- define "fanout.bytes" -}}
{{- $quantity := toString . -}}
{{- $units := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?([eE][0-9]+)?" $quantity -}}
{{- $suffix := trimPrefix $number $quantity -}}
{{- if or (not $number) (not (hasKey $units $suffix)) -}}
{{- fail (printf "fanout: %q is not a memory quantity fanout can read (like 8Gi or 512M)" $quantity) -}}
{{- end -}}
{{- mulf (float64 $number) (get $units $suffix) | floor | int64 -}}
{{- end -}}

{{/* Whole CPUs of a CPU quantity ("2", "1500m", 4): at least 1. */}}
{{- define "fanout.wholeCpus" -}}
{{- $quantity := toString . -}}
{{- $cpus := ternary (divf (trimSuffix "m" $quantity | float64) 1000) (float64 $quantity) (hasSuffix "m" $quantity) -}}
{{- max 1 (floor $cpus | int64) -}}
{{- end -}}

{{/*
Dask worker processes per pod: dask.workers.processes, else one per whole CPU of the limit. One
thread each: fanout's preprocessing is pandas code that holds the GIL.
*/}}
{{- define "fanout.daskWorkerProcesses" -}}
{{- $workers := .Values.dask.workers -}}
{{- $limit := required "fanout: dask.workers.resources.limits.cpu is required (it sizes the worker processes)" $workers.resources.limits.cpu -}}
{{- $cpus := include "fanout.wholeCpus" $limit | int64 -}}
{{- $processes := $workers.processes | default $cpus | int64 -}}
{{- if gt $processes $cpus -}}
{{- fail (printf "fanout: dask.workers.processes=%d exceeds the %d whole CPUs of dask.workers.resources.limits.cpu=%v: single-threaded processes beyond the CPU limit only take turns" $processes $cpus $limit) -}}
{{- end -}}
{{- $processes -}}
{{- end -}}

{{/*
Memory limit of each Dask worker process, in MiB: the container's memory limit less
dask.workers.memoryReserve (the nannies and the container's own overhead), split evenly. Dask
spills, pauses and restarts a worker against this number; `auto` would read the node's memory.
*/}}
{{- define "fanout.daskWorkerMemoryLimitMiB" -}}
{{- $workers := .Values.dask.workers -}}
{{- $limit := required "fanout: dask.workers.resources.limits.memory is required (it sizes each worker's --memory-limit)" $workers.resources.limits.memory -}}
{{- $usable := sub (include "fanout.bytes" $limit | int64) (include "fanout.bytes" $workers.memoryReserve | int64) -}}
{{- $processes := include "fanout.daskWorkerProcesses" . | int64 -}}
{{- $perProcess := div (div $usable $processes) 1048576 -}}
{{- if lt $perProcess 256 -}}
{{- fail (printf "fanout: dask.workers.resources.limits.memory=%v less memoryReserve=%v leaves %dMiB per worker process (%d processes); give each at least 256MiB" $limit $workers.memoryReserve $perProcess $processes) -}}
{{- end -}}
{{- $perProcess -}}
{{- end -}}

{{/* Port ranges of the worker processes and their nannies: one port each per process. */}}
{{- define "fanout.daskWorkerPortRange" -}}
{{- printf "%d:%d" (int64 .Values.dask.workers.workerPort) (add .Values.dask.workers.workerPort (include "fanout.daskWorkerProcesses" .) -1) -}}
{{- end -}}

{{- define "fanout.daskNannyPortRange" -}}
{{- printf "%d:%d" (int64 .Values.dask.workers.nannyPort) (add .Values.dask.workers.nannyPort (include "fanout.daskWorkerProcesses" .) -1) -}}
{{- end -}}

{{/* NetworkPolicy ports of a Dask cluster: the scheduler, the workers and their nannies. */}}
{{- define "fanout.daskPorts" -}}
{{- $processes := include "fanout.daskWorkerProcesses" . | int64 -}}
- protocol: TCP
  port: {{ .Values.dask.scheduler.port }}
- protocol: TCP
  port: {{ .Values.dask.workers.workerPort }}
  endPort: {{ add .Values.dask.workers.workerPort $processes -1 }}
- protocol: TCP
  port: {{ .Values.dask.workers.nannyPort }}
  endPort: {{ add .Values.dask.workers.nannyPort $processes -1 }}
{{- end -}}
