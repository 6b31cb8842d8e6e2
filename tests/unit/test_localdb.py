"""fanout.localdb: a private PostgreSQL cluster, created and run for real (no Airflow)."""

from __future__ import annotations

import shutil

import pytest

from fanout.localdb import DATABASE, ROLE, LocalPostgres, bindir, data_dir_for
from fanout.localstack import free_port
from fanout.supervise import Component, Supervisor

pytestmark = pytest.mark.skipif(
    bindir() is None, reason="PostgreSQL is not installed (make test installs it)"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("localdb")
    datadir = data_dir_for(tmp_path)
    postgres = LocalPostgres(datadir, free_port(), "s3cret-for-this-test")
    postgres.init()
    sup = Supervisor(report=lambda m: None)
    sup.start(
        Component(
            "postgres",
            postgres.command(),
            env={"PATH": "/usr/bin:/bin"},
            cwd=tmp_path,
            log=tmp_path / "postgres.log",
            user=postgres.user,
        )
    )
    try:
        postgres.wait_ready(timeout=60, alive=lambda: sup.pid("postgres") is not None)
        yield postgres
    finally:
        sup.stop(grace=5)
        shutil.rmtree(datadir, ignore_errors=True)


def test_the_cluster_serves_a_utf8_database_to_its_password_only(cluster):
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1", port=cluster.port, user=ROLE, password=cluster.password, dbname=DATABASE
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW server_encoding")
            assert cur.fetchone() == ("UTF8",)
            cur.execute("SELECT %s::text", ("Zürich → 東京",))
            assert cur.fetchone() == ("Zürich → 東京",)
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=cluster.port, user=ROLE, password="wrong", dbname=DATABASE)


def test_the_server_listens_on_loopback_only(cluster):
    conf = (cluster.datadir / "postmaster.opts").read_text()
    assert "listen_addresses=127.0.0.1" in conf


def test_init_keeps_an_existing_cluster(cluster):
    marker = cluster.datadir / "PG_VERSION"
    before = marker.stat().st_mtime_ns
    cluster.init()
    assert marker.stat().st_mtime_ns == before
