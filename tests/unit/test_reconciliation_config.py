"""`[reconciliation]` in the platform config: defaults, every key, and problems named by key path."""

from __future__ import annotations

from typing import Any

import pytest

from dualflow.gateway.config import ConfigError, parse_config
from dualflow.reconciliation.scheduler import ScheduleSettings


def test_defaults_and_every_key() -> None:
    assert parse_config({}).reconciliation == ScheduleSettings(enabled=False, time_utc_s=7200, sla_s=86400,
                                                               catch_up_days=3, retry_s=900.0, tick_s=60.0)
    got = parse_config({"reconciliation": {"enabled": True, "time_utc": "23:45", "sla_s": 3600, "catch_up_days": 7,
                                           "retry_s": 30, "tick_s": 0.5}}).reconciliation
    assert got == ScheduleSettings(True, 23 * 3600 + 45 * 60, 3600, 7, 30.0, 0.5)


@pytest.mark.parametrize(("table", "path"), [
    ({"enabled": "yes"}, "reconciliation.enabled"),
    ({"time_utc": "24:00"}, "reconciliation.time_utc"),
    ({"time_utc": "2:00"}, "reconciliation.time_utc"),
    ({"time_utc": 2}, "reconciliation.time_utc"),
    ({"sla_s": -1}, "reconciliation.sla_s"),
    ({"catch_up_days": 0}, "reconciliation.catch_up_days"),
    ({"catch_up_days": 32}, "reconciliation.catch_up_days"),
    ({"retry_s": 0}, "reconciliation.retry_s"),
    ({"tick_s": "fast"}, "reconciliation.tick_s"),
    ({"every": "day"}, "reconciliation.every"),
])
def test_problems_are_named_by_key_path(table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as bad:
        parse_config({"reconciliation": table})
    assert str(bad.value).startswith(f"{path}:"), str(bad.value)
