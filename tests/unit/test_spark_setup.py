"""The spark.* keys as Spark settings, and how many workers the spark runner runs."""

from __future__ import annotations

import os

import pytest

from zoo_serving import load_config
from zoo_serving.runners.spark import worker_count
from zoo_serving.spark.session import spark_conf, task_slots, with_task_retries

CORES = os.cpu_count() or 1


def config(**dotted: object):
    return load_config({"model": {"path": "/m"}}, **dotted)


@pytest.mark.parametrize(
    ("master", "expected"),
    [
        ("local", "local[1,4]"),
        ("local[2]", "local[2,4]"),
        ("local[*]", "local[*,4]"),
        ("local[2,7]", "local[2,7]"),
        ("spark://h:7077", "spark://h:7077"),
        ("yarn", "yarn"),
    ],
)
def test_local_masters_retry_failed_tasks(master: str, expected: str) -> None:
    assert with_task_retries(master) == expected


def test_seed_keys_map_to_spark_settings() -> None:
    cfg = config(
        **{
            "spark.master": "spark://h:7077",
            "spark.driver_memory": "2g",
            "spark.executor_memory": "3g",
            "spark.num_executors": 5,
            "spark.executor_cores": 6,
            "spark.total_executor_cores": 30,
        }
    )
    conf = spark_conf(cfg)
    assert conf["spark.master"] == "spark://h:7077"
    assert conf["spark.driver.memory"] == "2g"
    assert conf["spark.executor.memory"] == "3g"
    assert conf["spark.executor.instances"] == "5"
    assert conf["spark.executor.cores"] == "6"
    assert conf["spark.cores.max"] == "30"
    assert conf["spark.task.cpus"] == "1"


@pytest.mark.parametrize(
    ("master", "slots"),
    [
        ("local", 1),
        ("local[3]", 3),
        ("local[3,2]", 3),
        ("local[*]", CORES),
        ("local-cluster[2,3,1024]", 6),
        ("spark://h:7077", 4),  # spark.total_executor_cores, the seed's 4
        ("yarn", 4),  # num_executors 1 x executor_cores 4
        ("k8s://https://h:6443", 4),
    ],
)
def test_task_slots_follow_the_spark_keys(master: str, slots: int) -> None:
    assert task_slots(config(**{"spark.master": master})) == slots


def test_worker_count() -> None:
    assert worker_count(config(**{"spark.master": "local[1]"})) == 1
    assert worker_count(config(**{"spark.master": "local[64]"})) == min(64, CORES)  # capped
    assert worker_count(config(**{"spark.master": "spark://h:7077"})) == 4
    standalone = {"spark.master": "spark://h:7077", "spark.total_executor_cores": 12}
    assert worker_count(config(**standalone)) == 12
    yarn = {"spark.master": "yarn", "spark.num_executors": 3, "spark.executor_cores": 2}
    assert worker_count(config(**yarn)) == 6
    # params.workers above 1 wins; a master given (a session's) beats spark.master
    assert worker_count(config(**{"params.workers": 3, "spark.master": "local[1]"})) == 3
    assert worker_count(config(**{"spark.master": "spark://h:7077"}), "local[1]") == 1
