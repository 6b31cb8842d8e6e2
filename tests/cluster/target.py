"""Which cluster ``tests/cluster`` runs against: the local harness (default), or any cluster.

With ``FANOUT_TEST_KUBECONFIG`` set, the same tests run against that cluster (kind, minikube, a
cloud's): Airflow's components still run on this machine, the KubernetesExecutor creates the task
pods there, and the tests observe and disturb pods only through the Kubernetes API (watch, read,
delete, evict) and through probe tasks. What the cluster needs is in tests/cluster/FIDELITY.md.

| variable | meaning |
| --- | --- |
| ``FANOUT_TEST_KUBECONFIG`` | kubeconfig of the cluster; unset: the harness |
| ``FANOUT_TEST_KUBE_CONTEXT`` | its context (default: the kubeconfig's current one) |
| ``FANOUT_TEST_NAMESPACE`` | namespace of the task pods (must exist; the tests own its ConfigMap fanout-settings) |
| ``FANOUT_TEST_WORKER_IMAGE`` | the worker image (fanout's image with tests/cluster/dags in its DAGs folder) |
| ``FANOUT_TEST_API_HOST`` | the address at which pods reach this machine (the Execution API) |
| ``FANOUT_TEST_ARTIFACT_ROOT`` | the artifact root as pods see it (a mounted path or an s3:// URI) |
| ``FANOUT_TEST_ARTIFACT_PVC`` | a claim mounted at that path in task pods (optional) |
| ``FANOUT_TEST_LOCAL_ARTIFACT_ROOT`` | the same artifacts as this machine sees them (default: the artifact root) |
| ``FANOUT_CLUSTER_TEST_ENV`` | JSON of settings for the components and pods, e.g. node-pool labels: ``{"FANOUT_GPU_POOL_SELECTOR": "pool=gpu"}`` |

Node pools are fanout's own settings (``FANOUT_CPU_POOL_SELECTOR``, ``FANOUT_GPU_POOL_SELECTOR``,
their taints, ``FANOUT_GPU_RESOURCE``), given through ``FANOUT_CLUSTER_TEST_ENV``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class TargetError(ValueError):
    """A test setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Target:
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str | None = None
    worker_image: str | None = None
    api_host: str | None = None
    artifact_root: str | None = None
    artifact_pvc: str | None = None
    local_artifact_root: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def is_harness(self) -> bool:
        return self.kubeconfig is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Target:
        def get(name: str) -> str | None:
            return (environ.get(name) or "").strip() or None

        try:
            extra_env = json.loads(get("FANOUT_CLUSTER_TEST_ENV") or "{}")
        except json.JSONDecodeError as err:
            raise TargetError(f"FANOUT_CLUSTER_TEST_ENV is not valid JSON: {err}") from None
        if not isinstance(extra_env, dict) or not all(isinstance(v, str) for v in extra_env.values()):
            raise TargetError(
                'FANOUT_CLUSTER_TEST_ENV must be a JSON object of strings, e.g. {"FANOUT_RETRIES": "0"}'
            )
        kubeconfig = get("FANOUT_TEST_KUBECONFIG")
        if kubeconfig is None:
            return cls(extra_env=extra_env)

        required = {
            name: get(name)
            for name in (
                "FANOUT_TEST_NAMESPACE",
                "FANOUT_TEST_WORKER_IMAGE",
                "FANOUT_TEST_API_HOST",
                "FANOUT_TEST_ARTIFACT_ROOT",
            )
        }
        missing = [name for name, value in required.items() if value is None]
        if missing:
            raise TargetError(
                f"FANOUT_TEST_KUBECONFIG is set, so {', '.join(missing)} must be too (FIDELITY.md)"
            )
        if not Path(kubeconfig).is_file():
            raise TargetError(f"FANOUT_TEST_KUBECONFIG={kubeconfig!r} is not a file")
        artifact_root = required["FANOUT_TEST_ARTIFACT_ROOT"]
        local = get("FANOUT_TEST_LOCAL_ARTIFACT_ROOT") or artifact_root
        if "://" in local or not Path(local).is_dir():
            raise TargetError(
                f"FANOUT_TEST_LOCAL_ARTIFACT_ROOT={local!r} must be a directory on this machine holding what pods "
                "write to FANOUT_TEST_ARTIFACT_ROOT (a shared mount)"
            )
        return cls(
            kubeconfig=Path(kubeconfig),
            context=get("FANOUT_TEST_KUBE_CONTEXT"),
            namespace=required["FANOUT_TEST_NAMESPACE"],
            worker_image=required["FANOUT_TEST_WORKER_IMAGE"],
            api_host=required["FANOUT_TEST_API_HOST"],
            artifact_root=artifact_root,
            artifact_pvc=get("FANOUT_TEST_ARTIFACT_PVC"),
            local_artifact_root=Path(local),
            extra_env=extra_env,
        )

    def worker_image_config(self) -> dict[str, str]:
        """The executor's worker image settings for ``worker_image`` (repository[:tag])."""
        if not self.worker_image:
            return {}
        repository, _, tag = self.worker_image.rpartition(":")
        if not repository or "/" in tag:  # no tag: the colon belonged to a registry's port
            repository, tag = self.worker_image, "latest"
        return {
            "AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_REPOSITORY": repository,
            "AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_TAG": tag,
        }
