"""The routing configuration is validated as a whole, every problem named by its path, and
what `to_table` writes `parse` reads back unchanged."""

from __future__ import annotations

import pytest

from dualflow.routing.config import ConfigRejected, parse, to_table

CHANNELS = ("cardbank", "wallet-psp", "bank-rail")

GOOD = {
    "fee_weight": 2.5,
    "fallback_deadline_s": 20,
    "breaker": {"cool_down_s": 5, "probes": 2},
    "channels": {
        "cardbank": {"enabled": False, "disabled_reason": "contract renewal",
                     "maintenance": [{"start": 100, "end": 200}], "daily_caps": {"CNY": 1_000_000},
                     "fees": {"CNY": {"fixed": 10, "bps": 40, "minimum": 20,
                                      "tiers": [{"from_amount": 100_000, "fixed": 0, "bps": 30}]}}},
        "bank-rail": {"bank_codes": ["ICBC", "CMB"]},
    },
    "merchants": {"shop": {"deny": ["wallet-psp"], "pinned": "cardbank"}, "other": {"allow": ["bank-rail"]}},
}


def test_a_good_configuration_round_trips() -> None:
    config = parse(GOOD, CHANNELS, version=3)
    assert config.version == 3 and config.fee_weight == 2.5 and config.breaker.probes == 2
    assert config.rule("cardbank").fees["CNY"].fee_for(200_000) == 600
    assert config.rule("bank-rail").bank_codes == frozenset({"ICBC", "CMB"})
    assert config.rule("wallet-psp").enabled  # not mentioned: defaults
    assert parse(to_table(config), CHANNELS, version=3) == config


def test_every_problem_is_reported_with_its_path() -> None:
    bad = {
        "fee_weight": -1, "colour": "blue",
        "channels": {"nosuch": {}, "cardbank": {"enabled": "yes", "daily_caps": {"cny": 5},
                                                "maintenance": [{"start": 5, "end": 1}],
                                                "fees": {"CNY": {"bps": 1.5}}}},
        "merchants": {"shop": {"pinned": "wallet-psp", "deny": ["wallet-psp"]}},
        "breaker": {"open_at": 2},
    }
    with pytest.raises(ConfigRejected) as caught:
        parse(bad, CHANNELS)
    paths = {path for path, _why in caught.value.problems}
    assert paths == {"", "fee_weight", "channels.nosuch", "channels.cardbank.enabled",
                     "channels.cardbank.daily_caps.cny", "channels.cardbank.maintenance[0]",
                     "channels.cardbank.fees.CNY", "merchants.shop.pinned", "breaker.open_at"}


def test_the_example_file_is_valid_and_means_what_its_comments_say() -> None:
    import tomllib
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "routing.example.toml"
    config = parse(tomllib.loads(example.read_text()), CHANNELS)
    fees = config.rule("cardbank").fees["CNY"]
    assert fees.fee_for(1_000) == 100  # the 1.00 CNY minimum
    assert fees.fee_for(100_000) == 500  # 0.50%
    assert fees.fee_for(1_000_000) == 3_500  # the 0.35% tier
    assert fees.fee_for(2_000_000) == 5_000  # held at the maximum
    assert config.merchants["shop-1"].deny == frozenset({"wallet-psp"})
