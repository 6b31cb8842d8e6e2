"""docker-compose.yml brought up for real: the whole pipeline through the REST API, then down.

The stack runs as the README's "Docker Compose" section sets it up: secrets in an env file, the
images built by images/build.sh (Postgres from the local stand-in, as no registry is reachable
here), the Compose CLI available (``docker-compose`` v1, else ``docker compose``; FANOUT_COMPOSE
names another). Test-scale params go in through FANOUT_PARAMS. Tests run in file order; the
last one takes the stack down and checks nothing is left.
"""

from __future__ import annotations

import json
import secrets
import shlex
import shutil
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fanout.demo import PIPELINE, run_pipeline
from fanout.localstack import PROJECT_ROOT, AirflowClient, AirflowError, free_port
from tests.e2e.conftest import SMALL_PARAMS
from tests.images.engine import AIRFLOW_IMAGE, POSTGRES_IMAGE, build_images, docker, engine_env

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
WORKER_MEMORY = "2g"
WORKERS = ("dask-worker-1", "dask-worker-2")


def compose_cli() -> list[str]:
    import os

    if os.environ.get("FANOUT_COMPOSE"):
        return shlex.split(os.environ["FANOUT_COMPOSE"])
    return ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]


@dataclass
class ComposeStack:
    project: str
    env_file: Path
    port: int
    dashboard_port: int
    admin_password: str

    def compose(self, *args: str, check: bool = True, timeout: float = 900):
        import subprocess

        done = subprocess.run(
            [
                *compose_cli(),
                "--env-file",
                str(self.env_file),
                "-p",
                self.project,
                "-f",
                str(COMPOSE_FILE),
                *args,
            ],
            cwd=PROJECT_ROOT,
            env=engine_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert done.returncode == 0, (
                f"compose {' '.join(args)}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def label(self) -> str:
        return f"label=com.docker.compose.project={self.project}"

    def left_behind(self) -> dict[str, list[str]]:
        return {
            kind: docker(*cmd, "--filter", self.label(), "--format", field).stdout.split()
            for kind, cmd, field in (
                ("containers", ("ps", "-a"), "{{.Names}}"),
                ("networks", ("network", "ls"), "{{.Name}}"),
                ("volumes", ("volume", "ls"), "{{.Name}}"),
            )
        }


class PatientClient(AirflowClient):
    """Retries a read that timed out: on 2 busy cores the api-server's one worker, shared with the
    tasks' Execution API calls, can stall longer than the client's 30 s."""

    def _request(self, method: str, path: str, body=None, auth: bool = True):
        for attempt in range(3):
            try:
                return super()._request(method, path, body, auth)
            except TimeoutError:
                if method != "GET" or attempt == 2:
                    raise


def _env_file(path: Path, **values: str) -> Path:
    from cryptography.fernet import Fernet

    values = {
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "AIRFLOW_FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW_API_SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW_JWT_SECRET": secrets.token_hex(64),
        **values,
    }
    path.write_text("".join(f"{key}='{value}'\n" for key, value in values.items()))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    build_images("airflow", "postgres-standin")
    workdir = tmp_path_factory.mktemp("compose")
    running = ComposeStack(
        project=f"fanouttest{secrets.token_hex(3)}",
        env_file=workdir / ".env",
        port=free_port(),
        dashboard_port=free_port(),
        admin_password=secrets.token_hex(12),
    )
    _env_file(
        running.env_file,
        AIRFLOW_ADMIN_PASSWORD=running.admin_password,
        FANOUT_AIRFLOW_IMAGE=AIRFLOW_IMAGE,
        FANOUT_POSTGRES_IMAGE=POSTGRES_IMAGE,
        AIRFLOW_PORT=str(running.port),
        DASK_DASHBOARD_PORT=str(running.dashboard_port),
        DASK_WORKER_MEMORY=WORKER_MEMORY,
        FANOUT_PARAMS=json.dumps(SMALL_PARAMS),
    )
    try:
        running.compose("up", "-d", "--no-build")
        yield running
    finally:
        running.compose("down", "--volumes", "--remove-orphans", "--timeout", "20", check=False)


@pytest.fixture(scope="module")
def client(stack) -> AirflowClient:
    api = PatientClient(f"http://127.0.0.1:{stack.port}", "admin", stack.admin_password)
    deadline = time.monotonic() + 300
    while True:
        try:
            if api.health()["scheduler"]["status"] == "healthy":
                break
        except (OSError, AirflowError, KeyError):
            pass
        assert time.monotonic() < deadline, stack.compose("logs", "--tail", "30").stdout[-5000:]
        time.sleep(2)
    api.wait_for_dags(list(PIPELINE), timeout=300)
    return api


@pytest.fixture(scope="module")
def reports(stack, client) -> dict:
    """One trigger through the REST API: {dag_id: RunReport} of the three runs."""
    reports = run_pipeline(client, timeout=900)
    states = [(r.dag_id, r.state) for r in reports]
    assert states == [(d, "success") for d in PIPELINE], stack.compose("logs", "--tail", "50").stdout[-6000:]
    return {r.dag_id: r for r in reports}


@pytest.fixture(scope="module")
def pipeline(reports) -> dict[str, str]:
    """{dag_id: run_id} of the three runs."""
    return {dag_id: r.run_id for dag_id, r in reports.items()}


def test_the_pipeline_runs_to_the_video_through_the_rest_api(client, pipeline):
    assert client.dag_run("fanout_preprocess", pipeline["fanout_preprocess"])["run_type"] == "manual"
    for dag_id in ("fanout_train", "fanout_render"):
        assert client.dag_run(dag_id, pipeline[dag_id])["run_type"] == "asset_triggered"
        tis = client.task_instances(dag_id, pipeline[dag_id])
        assert {ti["state"] for ti in tis} == {"success"}


def test_fanout_params_reach_the_asset_triggered_runs(client, pipeline):
    """The defaults are 6 trials and 72 frames; FANOUT_PARAMS sizes the runs nobody triggered by hand."""
    trials = [
        ti
        for ti in client.task_instances("fanout_train", pipeline["fanout_train"])
        if ti["task_id"] == "train_trial"
    ]
    chunks = [
        ti
        for ti in client.task_instances("fanout_render", pipeline["fanout_render"])
        if ti["task_id"] == "render_chunk"
    ]
    assert len(trials) == SMALL_PARAMS["fanout_train"]["n_trials"]
    render = SMALL_PARAMS["fanout_render"]
    assert len(chunks) == render["n_frames"] // render["chunk_size"]


def test_outputs_are_in_the_artifacts_volume(stack, reports):
    units = {
        "features": f"{reports['fanout_preprocess'].prefix}/merged",
        "model": f"{reports['fanout_train'].prefix}/best",
        "video": f"{reports['fanout_render'].prefix}/video",
    }
    script = textwrap.dedent(
        f"""
        import json
        from fanout.storage import ArtifactStore
        store = ArtifactStore("/opt/airflow/artifacts")
        units = {units!r}
        print(json.dumps({{name: sorted((store.verified(unit) or {{}}).get("files", {{}})) for name, unit in units.items()}}))
        """
    )
    out = docker(
        "run",
        "--rm",
        "-i",
        "--network",
        "none",
        "-v",
        f"{stack.project}_artifacts:/opt/airflow/artifacts:ro",
        AIRFLOW_IMAGE,
        "python",
        "-",
        input=script,
    ).stdout
    files = json.loads(out.strip().splitlines()[-1])
    assert "manifest.json" in files["features"]
    assert {"model.pt", "metrics.json"} <= set(files["model"])
    assert {"render.mp4", "contact_sheet.png"} <= set(files["video"])


def test_every_long_running_service_is_healthy(stack, pipeline):
    state = {}
    for container in stack.compose("ps", "-q").stdout.split():
        service, status = docker(
            "inspect",
            "--format",
            '{{index .Config.Labels "com.docker.compose.service"}} '
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}:{{.State.ExitCode}}{{end}}",
            container,
        ).stdout.split()
        state[service] = status
    expected = {service: "healthy" for service in yaml.safe_load(COMPOSE_FILE.read_text())["services"]}
    expected["airflow-init"] = "exited:0"
    assert state == expected
    # The dag-processor's and triggerer's check fails for a job nobody runs.
    assert (
        stack.compose(
            "exec", "-T", "triggerer", "python", "/opt/fanout/jobcheck.py", "NoSuchJob", check=False
        ).returncode
        == 1
    )


def test_dask_workers_budget_the_memory_of_their_container(stack):
    script = (
        "import json; from distributed import Client; c = Client('tcp://localhost:8786', timeout=30); "
        "print(json.dumps(sorted(w['memory_limit'] for w in c.scheduler_info()['workers'].values())))"
    )
    limits = json.loads(
        stack.compose("exec", "-T", "dask-scheduler", "python", "-c", script).stdout.strip().splitlines()[-1]
    )
    assert limits == [2 * 1024**3] * len(WORKERS)
    host_memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    assert sum(limits) < host_memory


def test_dask_dashboard_renders_its_plots(stack):
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.dashboard_port}/status", timeout=10) as page:
        html = page.read().decode()
    assert "Dask needs bokeh" not in html
    assert "bokeh" in html.lower()
    with urllib.request.urlopen(
        f"http://127.0.0.1:{stack.dashboard_port}/individual-task-stream", timeout=10
    ) as page:
        assert page.status == 200


def test_dashboard_healthcheck_fails_when_bokeh_is_missing(stack):
    """The dask-scheduler service's own healthcheck, run against a scheduler without bokeh."""
    healthcheck = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["dask-scheduler"]["healthcheck"][
        "test"
    ]
    assert healthcheck[0] == "CMD"
    no_bokeh = (
        "import sys; sys.modules['bokeh'] = None; sys.argv = ['dask-scheduler', '--dashboard-address=:8787']; "
        "from distributed.cli.dask_scheduler import main; main()"
    )
    container = docker(
        "run", "-d", "--network", "none", AIRFLOW_IMAGE, "python", "-c", no_bokeh
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while True:
            page = docker("exec", container, "curl", "--silent", "http://localhost:8787/status", check=False)
            if page.returncode == 0:
                break
            assert time.monotonic() < deadline, docker("logs", container, check=False).stderr[-2000:]
            time.sleep(1)
        assert "Dask needs bokeh" in page.stdout, "the scheduler without bokeh serves its stand-in page"
        assert docker("exec", container, *healthcheck[1:], check=False).returncode != 0
    finally:
        docker("rm", "-f", container, check=False)


def test_down_leaves_no_container_network_or_volume(stack):
    assert stack.left_behind()["containers"], "the stack was up"
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")
    assert stack.left_behind() == {"containers": [], "networks": [], "volumes": []}
