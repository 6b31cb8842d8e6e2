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
