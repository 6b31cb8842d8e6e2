"""Pod Security Admission: the namespaces enforce `restricted` and every pod fanout starts meets it.

The rules checked are listed in tests/packaging/podsecurity.py. The official chart's pods are
checked by test_official_chart.py when FANOUT_OFFICIAL_CHART names the chart.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml

from tests.packaging.helmkit import KUBE_VERSIONS, NAMESPACE, NAMESPACES, POD_TEMPLATE, render_chart
from tests.packaging.podsecurity import pod_specs, violations
from tests.packaging.test_chart import VALUE_SETS

# A pod that meets `restricted`, to break one rule at a time.
COMPLIANT = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 50000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "initContainers": [
        {
            "name": "init",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
    "containers": [
        {
            "name": "base",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            "ports": [{"containerPort": 8080}],
        }
    ],
    "volumes": [
        {"name": "tmp", "emptyDir": {}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "x"}},
    ],
}


def broken(change) -> dict:
    spec = copy.deepcopy(COMPLIANT)
    change(spec)
    return spec


def base(spec: dict) -> dict:
    return spec["containers"][0]


def base_context(spec: dict) -> dict:
    return spec["containers"][0]["securityContext"]


VIOLATIONS = {
    "host-namespaces": (lambda s: s.update(hostNetwork=True), "baseline"),
    "privileged": (lambda s: base_context(s).update(privileged=True), "baseline"),
    "capabilities": (lambda s: base_context(s)["capabilities"].update(add=["SYS_ADMIN"]), "baseline"),
    "host-path": (lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "baseline"),
    "host-ports": (lambda s: base(s)["ports"][0].update(hostPort=8080), "baseline"),
    "host-probes": (
        lambda s: base(s).update(livenessProbe={"httpGet": {"host": "10.0.0.1", "port": 80}}),
        "baseline",
    ),
    "seccomp": (lambda s: base_context(s).update(seccompProfile={"type": "Unconfined"}), "baseline"),
    "selinux": (lambda s: base_context(s).update(seLinuxOptions={"type": "spc_t"}), "baseline"),
    "proc-mount": (lambda s: base_context(s).update(procMount="Unmasked"), "baseline"),
    "sysctls": (
        lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
        "baseline",
    ),
    "volume-types": (
        lambda s: s["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}),
        "restricted",
    ),
    "privilege-escalation": (
        lambda s: s["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        "restricted",
    ),
    "run-as-non-root": (lambda s: s["securityContext"].pop("runAsNonRoot"), "restricted"),
    "run-as-user": (lambda s: base_context(s).update(runAsUser=0), "restricted"),
    "seccomp-required": (lambda s: s["securityContext"].pop("seccompProfile"), "restricted"),
    "drop-all": (lambda s: base_context(s).pop("capabilities"), "restricted"),
}


def test_a_compliant_pod_passes_restricted():
    assert violations(COMPLIANT, "restricted") == []


@pytest.mark.parametrize("rule", VIOLATIONS)
def test_each_broken_rule_is_reported_at_its_level(rule):
    change, level = VIOLATIONS[rule]
    spec = broken(change)

    def reported(at: str) -> list[str]:
        return [v for v in violations(spec, at) if v.startswith(f"{rule}:")]

    assert reported("restricted")
    if level == "baseline":
        assert reported("baseline")
    else:
        assert violations(spec, "baseline") == [], "a restricted-only rule must pass baseline"


def test_a_container_opting_out_of_the_pods_non_root_is_reported():
    spec = broken(lambda s: base_context(s).update(runAsNonRoot=False))
    assert violations(spec) == [
        "run-as-non-root: container base (neither it nor the pod sets runAsNonRoot true)"
    ]


def namespace_levels() -> dict[str, str]:
    return {
        ns["metadata"]["name"]: ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for ns in yaml.safe_load_all(NAMESPACES.read_text())
    }


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_namespaces_enforce_audit_and_warn_restricted(kube_version):
    namespaces = list(yaml.safe_load_all(NAMESPACES.read_text()))
    assert {ns["metadata"]["name"] for ns in namespaces} == {"airflow", NAMESPACE}
    for ns in namespaces:
        kubernetes_validate.validate(ns, kube_version, strict=True)
        for mode in ("enforce", "audit", "warn"):
            assert ns["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_pod_helm_fanout_renders_meets_its_namespace_level(values):
    level = namespace_levels()[NAMESPACE]
    pods = list(pod_specs(render_chart(values)))
    assert pods or values.get("dask") == {"enabled": False}
    for name, metadata, spec in pods:
        assert violations(spec, level, metadata) == [], name


def test_the_worker_pod_template_meets_restricted():
    pod = yaml.safe_load(POD_TEMPLATE.read_text())
    assert violations(pod["spec"], namespace_levels()[NAMESPACE], pod["metadata"]) == []


def task_pod(size: str) -> dict:
    """The pod the executor builds for a task of ``size``: the template plus its pod_override."""
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import ApiClient

    from fanout.pods import pod_override

    pod = PodGenerator.construct_pod(
        dag_id="d",
        task_id="t",
        pod_id="d-t",
        try_number=1,
        kube_image="fanout-airflow:0.1.0",
        date=None,
        args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"],
        pod_override_object=pod_override(size),
        base_worker_pod=PodGenerator.deserialize_model_file(str(POD_TEMPLATE)),
        namespace=NAMESPACE,
        scheduler_job_id="1",
        run_id="manual__2026-11-22T00:00:00+00:00",
        map_index=-1,
    )
    return ApiClient().sanitize_for_serialization(pod)


def test_task_pods_of_every_size_meet_restricted_with_the_charts_settings(monkeypatch):
    """Every size, with the settings helm/fanout gives task pods (PVC storage adds a volume)."""
    from fanout import pools

    level = namespace_levels()[NAMESPACE]
    for values in (VALUE_SETS["default"], VALUE_SETS["pvc-storage"]):
        (configmap, _) = render_chart(values, show_only=["templates/settings/settings-configmap.yaml"])
        for name in [n for n in configmap["data"] if n.startswith("FANOUT_")]:
            monkeypatch.setenv(name, configmap["data"][name])
        for size in pools.SIZES:
            pod = task_pod(size)
            assert violations(pod["spec"], level, pod["metadata"]) == [], size
