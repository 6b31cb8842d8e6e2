"""A real S3-compatible server on loopback (moto's ``moto_server``) for any test suite.

``S3Server`` runs moto's server (as ``python -m moto.server`` does, recording each request's arrival
time for ``requests()``) in its own process group on a free port; ``env()``
is what a process needs to use it (credentials, region and the endpoint, which boto3, s3fs and
so ``FANOUT_ARTIFACT_ROOT=s3://...`` honour), ``remote_logging_env()`` what Airflow needs to keep
task logs there. Use it from pytest with the session fixture ``s3_server`` (tests/conftest.py),
or directly::

    with S3Server() as s3:
        s3.create_bucket("fanout")
        stack = AirflowStack(home, extra_env={**s3.env(), **s3.remote_logging_env("s3://fanout/logs"),
                                              "FANOUT_ARTIFACT_ROOT": "s3://fanout/artifacts"})

moto keeps everything in memory: buckets vanish when the server stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fanout.localstack import free_port

# moto accepts any credentials; these make the signing code paths run as they do against AWS.
ACCESS_KEY = "fanout-test-access-key"
SECRET_KEY = "fanout-test-secret-key"
REGION = "us-east-1"
LOG_CONN_ID = "fanout_object_store"


# moto's server (as ``python -m moto.server`` runs it) with each request's arrival time, method and
# path appended to a file: tests measure when a client (a pod uploading its log) talked to it.
_TIMED_SERVER = """
import sys, time
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
host, port, request_log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = DomainDispatcherApplication(create_backend_app)
out = open(request_log, "a", buffering=1)
def timed(environ, start_response):
    out.write(f"{time.time():.6f} {environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}\\n")
    return app(environ, start_response)
run_simple(host, port, timed, threaded=True, request_handler=MotoRequestHandler)
"""


@dataclass(frozen=True)
class S3Request:
    at: float  # epoch seconds the request arrived
    method: str
    path: str  # /bucket/key (path-style, as clients address a loopback IP)


@dataclass
class S3Server:
    port: int = 0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: Path | None = field(default=None, init=False, repr=False)
    _requests: Path | None = field(default=None, init=False, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> S3Server:
        self.port = self.port or free_port()
        self._log = Path(tempfile.mkstemp(prefix="moto-server-", suffix=".log")[1])
        self._requests = self._log.with_suffix(".requests")
        with self._log.open("w") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _TIMED_SERVER, "127.0.0.1", str(self.port), str(self._requests)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"moto_server exited with {self._proc.returncode}: {self._log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not answer within {timeout}s; see {self._log}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            self._proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(5)
        self._proc = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need -------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Credentials, region and endpoint for boto3/botocore and s3fs (AWS_ENDPOINT_URL)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    def connection_uri(self) -> str:
        """An Airflow ``aws`` connection (JSON form) to this server: the endpoint is its extra."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": ACCESS_KEY,
                "password": SECRET_KEY,
                "extra": {"region_name": REGION, "endpoint_url": self.endpoint_url},
            }
        )

    def remote_logging_env(self, base_log_folder: str, conn_id: str = LOG_CONN_ID) -> dict[str, str]:
        """Airflow settings that keep task logs under ``base_log_folder`` (``s3://bucket/prefix``)."""
        return {
            "AIRFLOW__LOGGING__REMOTE_LOGGING": "True",
            "AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER": base_log_folder,
            "AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID": conn_id,
            f"AIRFLOW_CONN_{conn_id.upper()}": self.connection_uri(),
        }

    def client(self):
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]

    def requests(self) -> list[S3Request]:
        """Every request the server has received so far, in arrival order."""
        if self._requests is None or not self._requests.exists():
            return []
        found = []
        for line in self._requests.read_text().splitlines():
            at, method, path = line.split(" ", 2)
            found.append(S3Request(float(at), method, path))
        return sorted(found, key=lambda r: r.at)
