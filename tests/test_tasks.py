"""The task registry (nola.tasks): one Task per dataset, consistent with itself and the data floor."""

from __future__ import annotations

import pytest

from nola.data import TASKS as DATA_TASKS
from nola.errors import NolaError
from nola.tasks import REGISTRY, TABLE_ORDER, check_task, get_task


def test_every_dataset_of_the_data_floor_has_exactly_one_task():
    assert tuple(REGISTRY) == DATA_TASKS
    assert all(task.name == name for name, task in REGISTRY.items())


def test_tables_come_in_the_papers_order():
    # LoRA prints E2E (Table 3), then DART (Table 13), then WebNLG (Table 14)
    assert TABLE_ORDER == ("e2e", "dart", "webnlg")


@pytest.mark.parametrize("name", DATA_TASKS)
def test_a_tasks_columns_and_scales_cover_its_metrics(name):
    task = get_task(name)
    flat = [f"{group}.{metric}" for group in task.groups for metric in task.metrics] if task.groups else list(task.metrics)
    assert sorted(column.key for column in task.columns) == sorted(flat)
    assert task.bleu_key in flat
    assert set(task.paper_scale) == set(task.metrics)
    assert task.fractions | task.percents <= set(task.metrics) and not task.fractions & task.percents


def test_the_papers_scale_of_each_task():
    # e2e-metrics prints BLEU 0.7040 where LoRA Table 3 prints 70.4; GenerationEval prints BLEU 0-100 as LoRA Tables 13-14
    assert get_task("e2e").paper_factor("BLEU") == 100.0 and get_task("e2e").paper_factor("NIST") == 1.0
    assert get_task("webnlg").paper_factor("unseen.BLEU") == 1.0
    assert get_task("webnlg").bleu_key == "all.BLEU"


def test_an_unknown_task_is_refused_naming_the_origin_and_the_known_ones():
    with pytest.raises(NolaError, match=r"runs/x/results.json: key 'task' is 'cnn'; use one of e2e, dart, webnlg"):
        check_task("cnn", "runs/x/results.json")
    with pytest.raises(NolaError, match="unknown task 'cnn'"):
        get_task("cnn")


def test_only_webnlg_takes_categories():
    with pytest.raises(NolaError, match="seen/unseen categories apply to task webnlg only, not dart"):
        get_task("dart").score([["a b"]], ["a b"], seen=[True])
