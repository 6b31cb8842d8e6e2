"""Kubernetes Pod Security Standards: the `baseline` and `restricted` checks over a pod spec.

Written from the Pod Security Standards page (kubernetes.io, "latest", Kubernetes 1.35) so tests can
check rendered objects offline, as the PodSecurity admission plugin would when a namespace is
labelled `pod-security.kubernetes.io/enforce: <level>`. ``violations(spec, level)`` returns one
line per broken rule, naming the rule and the container; an empty list means the pod is admitted.

Checked (containers = containers, initContainers and ephemeralContainers):

baseline
  host-namespaces      hostNetwork, hostPID, hostIPC unset or false
  host-process         windowsOptions.hostProcess unset or false (pod and containers)
  privileged           securityContext.privileged unset or false
  capabilities         capabilities.add only from the baseline set
  host-path            no hostPath volume
  host-ports           ports[].hostPort unset or 0
  host-probes          probes and lifecycle handlers name no host (httpGet.host, tcpSocket.host)
  apparmor             appArmorProfile.type RuntimeDefault or Localhost; the legacy annotation
                       runtime/default or localhost/*
  selinux              seLinuxOptions.type in the container types; user and role unset
  proc-mount           procMount unset or Default
  seccomp              seccompProfile.type not Unconfined
  sysctls              only the safe sysctls
restricted (all of baseline, and)
  volume-types         only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim,
                       projected, secret
  privilege-escalation allowPrivilegeEscalation false in every container
  run-as-non-root      runAsNonRoot true on the pod or on every container, false nowhere
  run-as-user          runAsUser not 0 (pod and containers)
  seccomp-required     seccompProfile.type RuntimeDefault or Localhost on the pod or on every container
  drop-all             capabilities.drop contains ALL; capabilities.add at most NET_BIND_SERVICE
"""

from __future__ import annotations

from collections.abc import Iterator

LEVELS = ("baseline", "restricted")
BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
RESTRICTED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def pod_specs(objects: list[dict]) -> Iterator[tuple[str, dict, dict]]:
    """(name, pod metadata, pod spec) of every Pod, workload template and CronJob in ``objects``."""
    for obj in objects:
        kind, name = obj.get("kind"), f"{obj.get('kind')}/{obj['metadata']['name']}"
        if kind == "Pod":
            yield name, obj.get("metadata", {}), obj["spec"]
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = obj["spec"]["template"]
            yield name, template.get("metadata") or {}, template["spec"]
        elif kind == "CronJob":
            template = obj["spec"]["jobTemplate"]["spec"]["template"]
            yield name, template.get("metadata") or {}, template["spec"]


def violations(spec: dict, level: str = "restricted", metadata: dict | None = None) -> list[str]:
    """Every rule of ``level`` that the pod ``spec`` breaks, as "rule: where"."""
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}; expected one of {LEVELS}")
    found = list(_baseline(spec, metadata or {}))
    if level == "restricted":
        found += list(_restricted(spec))
    return found


def _containers(spec: dict) -> Iterator[dict]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def _context(container: dict) -> dict:
    return container.get("securityContext") or {}


def _baseline(spec: dict, metadata: dict) -> Iterator[str]:
    pod = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"host-namespaces: {field} is true"
    contexts = [("pod", pod)] + [(f"container {c['name']}", _context(c)) for c in _containers(spec)]
    for where, context in contexts:
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            yield f"host-process: {where}"
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            yield f"selinux: {where} sets {selinux}"
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield f"seccomp: {where} is Unconfined"
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            yield f"apparmor: {where} is {apparmor}"
    for container in _containers(spec):
        name, context = container["name"], _context(container)
        if context.get("privileged"):
            yield f"privileged: container {name}"
        added = set((context.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            yield f"capabilities: container {name} adds {sorted(added - BASELINE_CAPABILITIES)}"
        if context.get("procMount", "Default") != "Default":
            yield f"proc-mount: container {name}"
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                yield f"host-ports: container {name} uses hostPort {port['hostPort']}"
        handlers = [container.get(probe) or {} for probe in _PROBES]
        handlers += list((container.get("lifecycle") or {}).values())
        for handler in handlers:
            for action in ("httpGet", "tcpSocket"):
                if (handler.get(action) or {}).get("host"):
                    yield f"host-probes: container {name} {action} names host {handler[action]['host']}"
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            yield f"host-path: volume {volume['name']}"
    for sysctl in pod.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield f"sysctls: {sysctl['name']}"
    for key, value in (metadata.get("annotations") or {}).items():
        if key.startswith(_APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            yield f"apparmor: annotation {key}={value}"


def _restricted(spec: dict) -> Iterator[str]:
    pod = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if kinds - RESTRICTED_VOLUMES:
            yield f"volume-types: volume {volume['name']} is {sorted(kinds)}"
    if pod.get("runAsNonRoot") is False:
        yield "run-as-non-root: pod sets runAsNonRoot false"
    if pod.get("runAsUser") == 0:
        yield "run-as-user: pod runs as uid 0"
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type")
    for container in _containers(spec):
        name, context = container["name"], _context(container)
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"privilege-escalation: container {name} does not set allowPrivilegeEscalation false"
        non_root = context.get("runAsNonRoot", pod.get("runAsNonRoot"))
        if non_root is not True:
            yield f"run-as-non-root: container {name} (neither it nor the pod sets runAsNonRoot true)"
        if context.get("runAsUser") == 0:
            yield f"run-as-user: container {name} runs as uid 0"
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"seccomp-required: container {name} has seccompProfile {seccomp}"
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield f"drop-all: container {name} does not drop ALL capabilities"
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            yield f"drop-all: container {name} adds {capabilities['add']}"
