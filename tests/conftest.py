"""Shared test set-up: offline, no telemetry, fresh random seeds that a failure reports."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test (or `PROOFKD_TEST_SEED`), printed when the test fails."""
    value = int(os.environ.get("PROOFKD_TEST_SEED", random.randrange(2**31)))
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            report.sections.append(("seed", f"reproduce with PROOFKD_TEST_SEED={seeds[0]}"))
