"""The Docker engine and fanout's images for the image and compose tests.

``engine_env()`` starts the private engine of images/dockerd.sh (or uses $DOCKER_HOST) and
returns the environment for docker commands; ``build_images()`` runs images/build.sh, the script
``make images`` runs. The base is ``$FANOUT_AIRFLOW_BASE`` when set (e.g. the official image on
a machine that can pull it), else the local stand-in built by images/airflow-base/build.sh.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess

from fanout.localstack import PROJECT_ROOT

TAG = re.search(r'^version = "(.+)"$', (PROJECT_ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
AIRFLOW_IMAGE = f"fanout-airflow:{TAG}"
POSTGRES_IMAGE = "fanout-postgres-standin:15"


@functools.cache
def engine_env() -> dict[str, str]:
    dockerd = PROJECT_ROOT / "images" / "dockerd.sh"
    subprocess.run([str(dockerd), "start"], check=True)
    host = subprocess.run([str(dockerd), "env"], check=True, capture_output=True, text=True).stdout
    return {**os.environ, "DOCKER_HOST": host.strip().split("=", 1)[1], "DOCKER_BUILDKIT": "0"}


def build_images(*images: str) -> dict[str, float]:
    """Build ``images`` (airflow, gpu-worker, postgres-standin); {image name: seconds}."""
    base = os.environ.get("FANOUT_AIRFLOW_BASE") or "standin"
    done = subprocess.run(
        [str(PROJECT_ROOT / "images" / "build.sh"), "--base", base, *images],
        env=engine_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"images/build.sh failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    print(done.stdout, end="")
    seconds = {}
    for line in done.stdout.splitlines():
        name, _, took = line.rpartition(" ")
        if took.endswith("s") and took[:-1].isdigit():
            seconds[name.split(" ")[0]] = float(took[:-1])
    return seconds


def docker(*args: str, input: str | None = None, check: bool = True, timeout: float = 600):
    """Run ``docker args``; the CompletedProcess (text). ``check`` fails the test with its output."""
    done = subprocess.run(
        ["docker", *args], env=engine_env(), input=input, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, (
            f"docker {' '.join(args)[:300]}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def run_in(image: str, *args: str, input: str | None = None, network: str = "none", check: bool = True):
    """``docker run --rm`` of ``image`` (its entrypoint) with ``args``; no network by default."""
    stdin = ["-i"] if input is not None else []
    return docker("run", "--rm", *stdin, "--network", network, image, *args, input=input, check=check)
