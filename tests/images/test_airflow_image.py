"""images/airflow, built for real and run: Airflow, fanout's workloads, ffmpeg, pins, non-root.

The image is built once per session by images/build.sh (what ``make images`` runs) on the
local stand-in of the official base (``FANOUT_AIRFLOW_BASE`` names another base). Every check
runs a fresh container of it without network.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from fanout.localstack import PROJECT_ROOT
from tests.images.engine import AIRFLOW_IMAGE, build_images, docker, run_in


@pytest.fixture(scope="module")
def image() -> str:
    build_images("airflow")
    return AIRFLOW_IMAGE


def _python(image: str, script: str):
    """Run a Python script in the image (through its entrypoint) and parse its last line as JSON."""
    out = run_in(image, "python", "-", input=textwrap.dedent(script)).stdout
    return json.loads(out.strip().splitlines()[-1])


def _pins() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_canonical(name)] = version
    return pins


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_entrypoint_runs_airflow_3_3_2(image):
    assert run_in(image, "version").stdout.strip() == "3.3.2"


def test_runs_as_uid_50000_gid_0_and_owns_its_code(image):
    out = run_in(
        image, "bash", "-c", "id -u; id -g; stat -c %u:%g /opt/airflow/plugins/fanout /opt/airflow/dags"
    )
    assert out.stdout.split() == ["50000", "0", "50000:0", "50000:0"]


def test_dags_parse_without_import_errors(image):
    result = _python(
        image,
        """
        import json, os
        os.environ["AIRFLOW__CORE__EXECUTOR"] = "LocalExecutor,KubernetesExecutor"
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag("/opt/airflow/dags")  # the image sets AIRFLOW__CORE__LOAD_EXAMPLES=False
        print(json.dumps({"dags": sorted(bag.dag_ids), "errors": {k: v[-500:] for k, v in bag.import_errors.items()}}))
        """,
    )
    assert result["errors"] == {}
    assert result["dags"] == ["fanout_preprocess", "fanout_render", "fanout_train"]


def test_renders_frames_and_encodes_them_with_ffmpeg(image):
    result = _python(
        image,
        """
        import json, tempfile
        import imageio.v2 as imageio
        from fanout import render
        from fanout.storage import ArtifactStore
        store = ArtifactStore(tempfile.mkdtemp())
        render.render_chunk(store, "chunk", start=0, stop=4, n_frames=4, width=32, height=18,
                            samples=1, seed=3, texture=None, device="cpu")
        summary = render.encode_video(store, ["chunk"], "video", fps=4)
        with store.local_copy("video/render.mp4") as path, imageio.get_reader(path) as reader:
            shapes = [list(frame.shape) for frame in reader]
        print(json.dumps({"verified": store.verified("video") is not None, "shapes": shapes}))
        """,
    )
    assert result["verified"]
    assert result["shapes"] == [[18, 32, 3]] * 4


def test_featurises_a_small_shard(image):
    result = _python(
        image,
        """
        import json, tempfile
        from fanout import daskrun, datasets
        from fanout.storage import ArtifactStore
        store = ArtifactStore(tempfile.mkdtemp())
        datasets.generate_dataset(store, "raw", datasets.SyntheticSpec(n_shards=1, rows_per_shard=5000, seed=7))
        (shard,) = datasets.list_shards(store, "raw")
        summary = daskrun.featurise_shard(store, shard, "features")  # in-process: no scheduler address
        manifest = store.verified("features")
        print(json.dumps({"rows_in": summary["rows_in"], "rows_out": summary["rows_out"],
                          "files": sorted(manifest["files"]) if manifest else None}))
        """,
    )
    assert result["rows_in"] == 5000
    assert 0 < result["rows_out"] < 5000, "dirty rows are dropped"
    assert "features/part-00000.parquet" in result["files"]


def test_pip_check_is_clean(image):
    assert run_in(image, "bash", "-c", "pip check").stdout.strip() == "No broken requirements found."


def test_every_installed_package_is_pinned_by_the_constraints(image):
    installed = json.loads(run_in(image, "bash", "-c", "pip list --format json").stdout)
    pins = _pins()
    # pip itself comes with the base image; torch is pinned without its +cpu build label.
    unpinned = {
        p["name"]: p["version"]
        for p in installed
        if _canonical(p["name"]) != "pip" and pins.get(_canonical(p["name"])) != p["version"].split("+")[0]
    }
    assert unpinned == {}, "installed at versions constraints.txt does not pin"


def test_torch_is_the_cpu_build(image):
    result = _python(image, "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda]))")
    assert result == ["2.13.0+cpu", None]


def test_gpu_image_requirements_resolve_to_the_cuda_build_under_the_constraints(image):
    """What images/gpu-worker installs, resolved from PyPI alone by the image's own pip and Python."""
    dockerfile = (PROJECT_ROOT / "images" / "gpu-worker" / "Dockerfile").read_text()
    assert "-c /opt/fanout/constraints.txt" in dockerfile
    report = docker(
        "run", "--rm", "--network", "host", image, "bash", "-c",
        "pip install --dry-run --ignore-installed --quiet --report - apache-airflow==3.3.2"
        " -r /opt/fanout/requirements.txt -r /opt/fanout/requirements-image.txt -c /opt/fanout/constraints.txt",
    ).stdout  # fmt: skip
    resolved = {
        _canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report)["install"]
    }
    assert resolved["torch"] == "2.13.0", "PyPI's build of torch (CUDA), not a +cpu one"
    assert {"nvidia-cublas", "nvidia-cudnn-cu13", "triton"} <= set(resolved)
    pins = _pins()
    assert {name: version for name, version in resolved.items() if pins.get(name) != version} == {}
