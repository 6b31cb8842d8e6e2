"""Which fan-ins go on when some of their units failed: only training's, by design."""

from __future__ import annotations

import pytest
from airflow.task.trigger_rule import TriggerRule

TOLERANT = {("fanout_train", "select_best"): TriggerRule.ALL_DONE_MIN_ONE_SUCCESS}
# Rules under which a task never runs after a failed upstream (none_failed also runs after skipped
# ones: commit_dataset, whose generate_shard units are skipped for a dataset already committed).
STRICT = {TriggerRule.ALL_SUCCESS, TriggerRule.NONE_FAILED, TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS}


def test_only_the_sweeps_fan_in_runs_after_failed_units(dagbag):
    """A sweep may lose a few trials (select_best decides by min_success_ratio); preprocessing and
    rendering need every shard and every chunk, so their fan-ins keep all_success."""
    rules = {
        (dag_id, task.task_id): task.trigger_rule for dag_id, dag in dagbag.dags.items() for task in dag.tasks
    }
    tolerant = {key: rule for key, rule in rules.items() if rule not in STRICT}
    assert tolerant == TOLERANT
    assert (
        rules["fanout_preprocess", "merge_stats"] == rules["fanout_render", "encode_video"] == "all_success"
    )


def test_the_sweeps_fan_in_reads_the_plan_and_waits_for_every_trial(dagbag):
    dag = dagbag.dags["fanout_train"]
    select_best = dag.get_task("select_best")
    assert select_best.upstream_task_ids == {"plan_trials", "train_trial"}
    assert dag.params["min_success_ratio"] == pytest.approx(0.8)
