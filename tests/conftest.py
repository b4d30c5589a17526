"""Shared test settings: everything offline, figures without a screen; a local Ray instance."""

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs (skips where the 'ray' extra is not installed)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bayes-simfluence",
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
