"""kubesim: a small, faithful local Kubernetes cluster for tests.

A Kubernetes API server on 127.0.0.1 (reached through a kubeconfig), simulated nodes in pools, a scheduler
that binds pods by nodeSelector, node affinity, tolerations and resource requests, and a kubelet that
runs each pod's container as a local process. The unmodified Airflow KubernetesExecutor and the
`kubernetes` client talk to it as to a real cluster. See cluster.py for the entry point, faults.py for
fault injection and records.py for what tests can inspect after the fact.
"""

from tests.kubesim.cluster import Cluster
from tests.kubesim.faults import FaultError
from tests.kubesim.objects import GPU_RESOURCE, GPU_TAINT, POOL_LABEL, NodeSpec, default_nodes
from tests.kubesim.records import CapacitySample, PodRecord

__all__ = [
    "GPU_RESOURCE",
    "GPU_TAINT",
    "POOL_LABEL",
    "CapacitySample",
    "Cluster",
    "FaultError",
    "NodeSpec",
    "PodRecord",
    "default_nodes",
]
