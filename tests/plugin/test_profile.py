"""`PartClock`: seconds and peak memory per part of a step, and nothing when it is off."""

from __future__ import annotations

import torch

from proofkd.plugin.profile import GiB, LiveTensorBytes, PartClock

MIB = 2**20


def allocate(mib: int) -> torch.Tensor:
    return torch.ones(mib * MIB // 4, dtype=torch.float32)


def test_an_off_clock_logs_nothing():
    clock = PartClock(enabled=False)
    with clock.part("teacher_forward"):
        allocate(4)
    assert clock.drain("proofkd/") == {}


def test_a_span_reports_its_peak_above_its_start_and_its_seconds():
    clock = PartClock(enabled=True, device="cpu")
    kept = allocate(8)  # allocated before the span: not its memory
    with clock.part("outer"):
        first = allocate(16)
        with clock.part("inner"):
            temporary = allocate(4)
            del temporary
            allocate(2)
        del first
    logs = clock.drain("proofkd/")
    assert logs["proofkd/peak_gib/inner"] * GiB == 4 * MIB
    assert logs["proofkd/peak_gib/outer"] * GiB == 20 * MIB
    assert logs["proofkd/seconds/outer"] >= logs["proofkd/seconds/inner"] > 0
    assert clock.drain("proofkd/") == {}  # drained
    assert kept.numel()


def test_parts_add_up_over_an_interval_and_keep_the_largest_peak():
    clock = PartClock(enabled=True, device="cpu")
    for mib in (2, 6, 4):
        with clock.part("micro_step"):
            allocate(mib)
    logs = clock.drain("opd/")
    assert logs["opd/peak_gib/micro_step"] * GiB == 6 * MIB
    assert set(logs) == {"opd/seconds/micro_step", "opd/peak_gib/micro_step"}


def test_views_and_in_place_writes_add_nothing():
    before = allocate(8)
    with LiveTensorBytes() as probe:
        before.mul_(2)
        before[:10].add_(1)
        before.view(2, -1)
    assert probe.peak == 0


def test_backward_is_counted():
    weight = torch.randn(512, 512, requires_grad=True)
    x = torch.randn(256, 512)
    loss = (x @ weight).square().sum()
    with LiveTensorBytes() as probe:
        loss.backward()
    assert probe.peak >= weight.numel() * 4  # at least the weight's gradient
