{{/*
fanout settings: every value that reaches Airflow components and task pods as environment, in
one map (name -> value). The ConfigMap (settings-configmap.yaml) writes it out; a new setting is
one line here. extraSettings are added last and may not replace a setting made here.
*/}}
{{- define "fanout.settings" -}}
{{- $s := dict -}}
{{- /* Node pools (fanout.pools) */ -}}
{{- $_ := set $s "FANOUT_CPU_POOL_SELECTOR" .Values.nodePools.cpu.selector -}}
{{- $_ := set $s "FANOUT_CPU_TAINT" (include "fanout.taintString" .Values.nodePools.cpu.taints) -}}
{{- $_ := set $s "FANOUT_GPU_POOL_SELECTOR" .Values.nodePools.gpu.selector -}}
{{- $_ := set $s "FANOUT_GPU_TAINT" (include "fanout.taintString" .Values.nodePools.gpu.taints) -}}
{{- $_ := set $s "FANOUT_GPU_RESOURCE" .Values.nodePools.gpu.resource -}}
{{- $_ := set $s "FANOUT_GPU_AIRFLOW_POOL" .Values.nodePools.gpu.airflowPool -}}
{{- $_ := set $s "FANOUT_GPU_AIRFLOW_POOL_SLOTS" .Values.nodePools.gpu.gpus -}}
{{- $_ := set $s "FANOUT_RENDER_POOL" .Values.nodePools.renderPool -}}
{{- $_ := set $s "FANOUT_GPU_IMAGE" (include "fanout.image" (list .Values.images.gpuWorker.repository .Values.images.gpuWorker.tag)) -}}
{{- with .Values.taskSizes }}{{ $_ := set $s "FANOUT_TASK_SIZES" (toJson .) }}{{ end -}}
{{- $_ := set $s "FANOUT_OOM_MEMORY_FACTOR" .Values.retries.oomMemoryFactor -}}
{{- with .Values.retries.nodeFaultExitCodes }}{{ $_ := set $s "FANOUT_NODE_FAULT_EXIT_CODES" (join "," .) }}{{ end -}}
{{- with .Values.airflow.lightTaskExecutor }}{{ $_ := set $s "FANOUT_LIGHT_TASK_EXECUTOR" . }}{{ end -}}
{{- if .Values.priorityClasses.create }}{{ $_ := set $s "FANOUT_PRIORITY_CLASS_PREFIX" .Values.priorityClasses.prefix }}{{ end -}}
{{- if .Values.workerServiceAccount.create }}{{ $_ := set $s "FANOUT_WORKER_SERVICE_ACCOUNT" .Values.workerServiceAccount.name }}{{ end -}}
{{- /* Storage */ -}}
{{- $_ := set $s "FANOUT_ARTIFACT_ROOT" (include "fanout.artifactRoot" .) -}}
{{- if eq .Values.storage.mode "pvc" -}}
{{- $_ := set $s "FANOUT_ARTIFACT_PVC" .Values.storage.pvc.name -}}
{{- else if .Values.storage.objectStore.existingSecret -}}
{{- $_ := set $s "FANOUT_OBJECT_STORE_SECRET" .Values.storage.objectStore.existingSecret -}}
{{- end -}}
{{- /* Compute */ -}}
{{- $_ := set $s "DASK_SCHEDULER_ADDRESS" (ternary (include "fanout.daskSchedulerAddress" .) "" .Values.dask.enabled) -}}
{{- $_ := set $s "FANOUT_DEVICE" .Values.device -}}
{{- /* Schedule */ -}}
{{- $_ := set $s "FANOUT_SCHEDULE" .Values.schedule -}}
{{- /* Airflow */ -}}
{{- $_ := set $s "AIRFLOW__CORE__EXECUTION_API_SERVER_URL" (include "fanout.executionApiServerUrl" .) -}}
{{- $_ := set $s "AIRFLOW__LOGGING__REMOTE_LOGGING" (ternary "True" "False" .Values.remoteLogging.enabled) -}}
{{- if .Values.remoteLogging.enabled -}}
{{- $_ := set $s "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER" .Values.remoteLogging.baseLogFolder -}}
{{- $_ := set $s "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID" .Values.remoteLogging.connId -}}
{{- $_ := set $s "AIRFLOW__LOGGING__DELETE_LOCAL_LOGS" "True" -}}
{{- end -}}
{{- range $key, $value := .Values.extraSettings -}}
{{- if hasKey $s $key -}}
{{- fail (printf "fanout: extraSettings.%s is a setting the chart makes from its values; set that value instead" $key) -}}
{{- end -}}
{{- $_ := set $s $key $value -}}
{{- end -}}
{{- range $key, $value := $s }}
{{ $key }}: {{ toString $value | quote }}
{{- end -}}
{{- end -}}
