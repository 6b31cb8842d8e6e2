{{/*
Network peers shared by the policies: DNS, the object store, fanout pods in this namespace.
*/}}
{{- define "fanout.egressDns" -}}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}

{{- define "fanout.egressObjectStore" -}}
- to:
    {{- range .Values.networkPolicies.objectStoreCidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - protocol: TCP
      port: 443
{{- end -}}

{{/* Task pods, the Dask scheduler and Dask workers of this release. */}}
{{- define "fanout.computePeers" -}}
- podSelector:
    matchExpressions:
      - key: app.kubernetes.io/name
        operator: In
        values: ["fanout"]
      - key: app.kubernetes.io/component
        operator: In
        values: ["worker", "dask-scheduler", "dask-worker"]
{{- end -}}
