"""fanout.confguard: a trigger whose conf names an unknown key is refused before Airflow creates a run."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from fanout import confguard
from fanout.confguard import ConfGuard, unknown_conf_keys

PARAMS = ["dataset_prefix", "dirt", "n_shards", "rows_per_shard", "seed"]


def test_a_misspelt_key_is_named_with_a_suggestion_and_the_valid_keys():
    problem = unknown_conf_keys("fanout_preprocess", {"n_shard": 3}, PARAMS)
    assert problem == (
        "fanout_preprocess: unknown conf key(s) 'n_shard' (did you mean 'n_shards'?); "
        "valid keys: dataset_prefix, dirt, n_shards, rows_per_shard, seed"
    )


@pytest.mark.parametrize("conf", [None, {}, {"n_shards": 3, "seed": 1}])
def test_known_keys_or_no_conf_pass(conf):
    assert unknown_conf_keys("d", conf, PARAMS) is None


def test_conf_that_is_not_an_object_is_refused():
    assert "must be a JSON object" in unknown_conf_keys("d", [1, 2], PARAMS)


@pytest.fixture
def client(monkeypatch):
    """A stand-in for Airflow's trigger routes behind the guard; the DAG table is a dict."""
    dags = {"fanout_preprocess": (["fanout", "preprocessing"], PARAMS), "other": (["etl"], ["x"])}
    monkeypatch.setattr(confguard, "_declared_params", dags.get)
    created = []

    async def trigger(request):
        created.append(await request.json())
        return JSONResponse({"dag_run_id": "r1"})

    app = Starlette(
        routes=[
            Route("/api/v2/dags/{dag_id}/dagRuns", trigger, methods=["POST"]),
            Route("/api/v2/backfills", trigger, methods=["POST"]),
        ]
    )
    app.add_middleware(ConfGuard)
    test_client = TestClient(app)
    test_client.created = created
    return test_client


def test_trigger_with_an_unknown_key_gets_400_and_no_run(client):
    answer = client.post("/api/v2/dags/fanout_preprocess/dagRuns", json={"conf": {"n_shard": 3}})
    assert answer.status_code == 400
    assert "'n_shard' (did you mean 'n_shards'?)" in answer.json()["detail"]
    assert client.created == []


def test_valid_trigger_reaches_airflow_with_its_body_intact(client):
    body = {"conf": {"n_shards": 3}, "logical_date": None}
    answer = client.post("/api/v2/dags/fanout_preprocess/dagRuns", json=body)
    assert answer.status_code == 200
    assert client.created == [body]


def test_backfill_conf_is_checked_too(client):
    answer = client.post(
        "/api/v2/backfills", json={"dag_id": "fanout_preprocess", "dag_run_conf": {"sed": 1}}
    )
    assert answer.status_code == 400
    assert "'sed' (did you mean 'seed'?)" in answer.json()["detail"]


def test_dags_not_tagged_fanout_keep_airflows_behaviour(client):
    answer = client.post("/api/v2/dags/other/dagRuns", json={"conf": {"anything": 1}})
    assert answer.status_code == 200
