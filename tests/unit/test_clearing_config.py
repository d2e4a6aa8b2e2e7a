"""The `[clearing]` table of the platform config: what it becomes, and each problem named by key path."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from dualflow.clearing.caps import CapPolicy, NetDebitCaps
from dualflow.clearing.settings import ClearingSettings
from dualflow.gateway.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dualflow.example.toml"

GOOD = """
[clearing]
pools = ["bank-a", "bank-b"]
currencies = ["CNY", "USD"]
window_s = 3600
cutoff_offset_s = 600
cap_policy = "queue"
default_cap_minor = 1000
settlement_retries = 0
settle_interval_s = 0.5
invariant_interval_s = 0
[clearing.caps.bank-a]
CNY = 50
"""


def test_a_full_table_becomes_settings() -> None:
    assert parse_config(tomllib.loads(GOOD)).clearing == ClearingSettings(
        pools=("bank-a", "bank-b"), currencies=("CNY", "USD"), window_s=3600, cutoff_offset_s=600,
        cap_policy=CapPolicy.QUEUE, caps=NetDebitCaps({("bank-a", "CNY"): 50}, 1000), settlement_retries=0,
        settle_interval_s=0.5, invariant_interval_s=0.0)


def test_absent_means_no_pools_and_the_example_file_configures_three() -> None:
    assert parse_config({}).clearing == ClearingSettings()
    example = load_config(EXAMPLE).clearing
    assert example.pools == ("bank-a", "bank-b", "bank-c") and example.cap_policy is CapPolicy.QUEUE
    assert example.caps.cap("bank-c", "CNY") == 100_000_000 and example.caps.cap("bank-a", "CNY") == 500_000_000


@pytest.mark.parametrize(("change", "key_path"), [
    ({"pools": []}, "clearing.pools"),
    ({"pools": ["bank a"]}, "clearing.pools[0]"),
    ({"pools": ["x", "x"]}, "clearing.pools[1]"),
    ({"pools": "bank-a"}, "clearing.pools"),
    ({"currencies": ["CNY", "XXX"]}, "clearing.currencies[1]"),
    ({"currencies": []}, "clearing.currencies"),
    ({"window_s": -1}, "clearing.window_s"),
    ({"cutoff_offset_s": 3600}, "clearing.cutoff_offset_s"),
    ({"window_s": 0}, "clearing.cutoff_offset_s"),
    ({"cap_policy": "drop"}, "clearing.cap_policy"),
    ({"default_cap_minor": 1.5}, "clearing.default_cap_minor"),
    ({"caps": {"bank-z": {"CNY": 1}}}, "clearing.caps.bank-z"),
    ({"caps": {"bank-a": {"EUR": 1}}}, "clearing.caps.bank-a.EUR"),
    ({"caps": {"bank-a": {"CNY": -1}}}, "clearing.caps.bank-a.CNY"),
    ({"settlement_retries": -1}, "clearing.settlement_retries"),
    ({"settle_interval_s": 0}, "clearing.settle_interval_s"),
    ({"invariant_interval_s": "often"}, "clearing.invariant_interval_s"),
    ({"cut_off": 1}, "clearing.cut_off"),
    ({"default_pool": "bank-z"}, "clearing.default_pool"),
    ({"merchant_pools": {"shop": "bank-z"}}, "clearing.merchant_pools.shop"),
])
def test_each_problem_is_named_by_its_key_path(change: dict[str, Any], key_path: str) -> None:
    data = tomllib.loads(GOOD)
    data["clearing"].update(change)
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.key_path == key_path, str(caught.value)


def test_pools_are_required_when_the_table_is_there() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"clearing": {"currencies": ["CNY"]}})
    assert caught.value.key_path == "clearing.pools"


def test_homes_and_the_channels_collecting_into_a_pool() -> None:
    """A transfer channel whose own account is a pool's rail account collects into that pool; any
    other channel (another account, another kind) does not."""
    data = tomllib.loads(GOOD)
    data["clearing"].update({
        "default_pool": "bank-b", "merchant_pools": {"shop": "bank-a"}, "settlement_channel": "rail-a",
        "currencies": ["CNY"], "caps": {},
        "rail_accounts": {"bank-a": {"bank_code": "BKA", "number": "6222000000000101", "name": "reserve A"},
                          "bank-b": {"bank_code": "BKB", "number": "6222000000000202", "name": "reserve B"}}})
    rail = {"base_url": "http://127.0.0.1:1", "currencies": ["CNY"]}
    data["channels"] = [
        {"name": "rail-a", "kind": "transfer", "settings": {**rail, "pool_account": {
            "bank_code": "BKA", "number": "6222000000000101", "name": "reserve A"}}},
        {"name": "rail-x", "kind": "transfer", "settings": {**rail, "pool_account": {
            "bank_code": "BKA", "number": "6222000000000999", "name": "other"}}},
        {"name": "rail-b", "kind": "transfer", "settings": {**rail, "pool_account": {
            "bank_code": "BKB", "number": "6222000000000202", "name": "reserve B"}}}]
    clearing = parse_config(data).clearing
    assert clearing.channel_pools == {"rail-a": "bank-a", "rail-b": "bank-b"}
    assert clearing.home_pool == "bank-b" and dict(clearing.merchant_pools) == {"shop": "bank-a"}
    assert ClearingSettings(pools=("p", "q")).home_pool == "p"
