"""Run the local cluster standalone: ``python -m tests.kubesim --kubeconfig /tmp/kubeconfig.yaml``.

Writes a kubeconfig for it (``KUBECONFIG=... kubectl get nodes`` works), prints pod phase changes,
and runs until interrupted (SIGINT or SIGTERM), then kills every pod process.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tests.kubesim import Cluster, NodeSpec
from tests.kubesim.store import Change


def parse_node(text: str) -> NodeSpec:
    """``NAME=POOL:CPU:MEMORY[:GPUS]``, e.g. ``gpu-node-1=gpu:8:32Gi:1``."""
    try:
        name, rest = text.split("=", 1)
        pool, cpu, memory, *gpus = rest.split(":")
        return NodeSpec(name, pool=pool, cpu=cpu, memory=memory, gpus=int(gpus[0]) if gpus else 0)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected NAME=POOL:CPU:MEMORY[:GPUS], got {text!r}") from error


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.kubesim", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kubeconfig", type=Path, help="where to write the kubeconfig (default: in --workdir)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="pod directories and logs (default: a temporary directory)"
    )
    parser.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--namespace", default="default", help="extra namespace to create")
    parser.add_argument(
        "--node",
        type=parse_node,
        action="append",
        dest="nodes",
        help="a node NAME=POOL:CPU:MEMORY[:GPUS]; repeat (default: 2 CPU nodes, 1 GPU node)",
    )
    parser.add_argument(
        "--image-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="env every container gets (what an image would bake in); repeat",
    )
    parser.add_argument(
        "--container-start-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="time from binding to process start (image pull, container creation)",
    )
    args = parser.parse_args()

    cluster = Cluster(
        args.nodes,
        namespace=args.namespace,
        workdir=args.workdir,
        image_env=dict(item.split("=", 1) for item in args.image_env),
        container_start_delay=args.container_start_delay,
        port=args.port,
    )
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())

    def show(change: Change) -> None:
        if change.kind != "Pod":
            return
        pod, before = change.object, change.previous or {}
        phase, node = pod["status"].get("phase"), pod["spec"].get("nodeName") or "-"
        if (
            change.type == "DELETED"
            or phase != (before.get("status") or {}).get("phase")
            or node != (before.get("spec") or {}).get("nodeName")
        ):
            print(
                f"{change.type:8} {pod['metadata']['namespace']}/{pod['metadata']['name']}"
                f"  {phase}  node={node}",
                flush=True,
            )

    cluster.store.subscribe(show)
    with cluster:
        if args.kubeconfig:
            cluster.write_kubeconfig(args.kubeconfig)
        kubeconfig = args.kubeconfig or cluster.kubeconfig_path
        nodes = ", ".join(
            f"{n.name} ({n.pool}{f', {n.gpus} GPU' if n.gpus else ''})" for n in cluster.node_specs
        )
        print(
            f"kubesim serving {cluster.url}\n  KUBECONFIG={kubeconfig}\n  nodes: {nodes}\n"
            f"  pods in {cluster.workdir}",
            flush=True,
        )
        stopped.wait()
        print("kubesim stopping: killing every pod process", flush=True)


if __name__ == "__main__":
    main()
