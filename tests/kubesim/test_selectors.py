"""Label and field selectors match as the Kubernetes API server's do."""

import pytest

from tests.kubesim.selectors import SelectorError, parse_field_selector, parse_label_selector

LABELS = {"airflow-worker": "7", "dag_id": "train", "fanout.io/pool": "gpu", "empty": ""}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("dag_id=train", True),
        ("dag_id==train", True),
        ("dag_id=other", False),
        ("dag_id!=other", True),
        ("dag_id!=train", False),
        ("missing!=x", True),  # != matches objects without the key
        ("fanout.io/pool in (cpu, gpu)", True),
        ("fanout.io/pool in (cpu)", False),
        ("airflow-worker notin (1,2)", True),
        ("airflow-worker notin (7,8)", False),
        ("missing notin (a)", True),  # notin matches objects without the key
        ("missing in (a)", False),
        ("dag_id", True),
        ("missing", False),
        ("!missing", True),
        ("!dag_id", False),
        ("empty=", True),
        ("airflow-worker=7,airflow_executor_done!=True", True),  # the executor's watch selector
        ("kubernetes_executor=True,airflow-worker!=7", False),
        ("dag_id=train, fanout.io/pool in (gpu,cpu), !missing", True),
    ],
)
def test_label_selector_matches_like_the_api_server(selector, expected):
    assert parse_label_selector(selector).matches(LABELS) is expected


@pytest.mark.parametrize("selector", ["a in ()", "a in (b", "a=b=c", "=b", "a notin b", "a==(b)", "a,,b"])
def test_malformed_label_selectors_are_rejected(selector):
    with pytest.raises(SelectorError):
        parse_label_selector(selector)


POD = {
    "metadata": {"name": "p", "namespace": "airflow"},
    "spec": {"nodeName": "gpu-node-1"},
    "status": {"phase": "Succeeded"},
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("status.phase=Succeeded", True),
        ("status.phase!=Succeeded", False),
        ("status.phase==Running", False),
        ("spec.nodeName=gpu-node-1,metadata.namespace=airflow", True),
        ("metadata.name!=p", False),
        ("status.podIP=", True),  # unset fields compare as the empty string
    ],
)
def test_pod_field_selector(selector, expected):
    assert parse_field_selector(selector, "Pod").matches(POD) is expected


def test_unsupported_field_is_rejected_as_the_api_server_does():
    with pytest.raises(SelectorError, match=r'field label not supported: "spec\.containers"'):
        parse_field_selector("spec.containers=x", "Pod")
