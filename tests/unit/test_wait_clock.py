"""The wait clock counts overlapping waits once: the operator's share is what is left."""

from snapgroup.hooks.registry import WaitClock


def test_overlapping_waits_count_once_and_kinds_can_be_separated() -> None:
    clock = WaitClock({"pods": [(0.0, 2.0), (1.0, 3.0)], "cut": [(5.0, 6.5)]})
    assert clock.seconds("pods") == 3.0
    assert clock.seconds("cut") == 1.5
    assert clock.seconds() == 4.5
    assert WaitClock().seconds() == 0.0


def test_nested_intervals_do_not_add() -> None:
    clock = WaitClock({"pods": [(0.0, 10.0)], "cut": [(2.0, 3.0)]})
    assert clock.seconds() == 10.0
