"""Same-bank fees: a transfer channel whose pool account is at the payer's bank prices the payment
with its `same_bank_fees`, and the router (decide, fee) sees that price; the transfer settings
parse the schedule like `fees` and describe() exposes the pool's bank as the home bank."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualflow.adapters.contract import Capabilities, ChannelConfig, FeeSchedule
from dualflow.adapters.transfer import ConfigError, TransferSettings, create
from dualflow.core.payments.model import Asset
from dualflow.routing.config import ChannelRule, RoutingConfig
from dualflow.routing.policy import RouteRequest, Router

AMOUNT = 100_000  # 1,000.00 CNY


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("same-bank-keys") / "hmac.hex"
    path.write_text("ab" * 32 + "\n")
    return path


def channel(name: str, bank: str, key_file: Path, **settings: Any) -> ChannelConfig:
    base = {"base_url": "http://127.0.0.1:9", "currencies": ["CNY", "USD"],
            "pool_account": {"bank_code": bank, "number": "6222000000000001", "name": "dualflow reserve"}}
    return ChannelConfig(name=name, kind="transfer", settings={**base, **settings}, key_files={"hmac_key": key_file})


def pools(key_file: Path) -> list[Capabilities]:
    """Two pool banks: BANKA's channel dearer in general (30 bps against 20), each cheaper
    within its own bank (BANKA 5 bps held at most 100; BANKB tiered fixed parts, the un-inlined
    schedule). USD has no same-bank schedule anywhere."""
    a = create(channel("xfer-a", "BANKA", key_file,
                       fees={"CNY": {"bps": 30}, "USD": {"bps": 30}},
                       same_bank_fees={"CNY": {"bps": 5, "maximum": 100}}))
    b = create(channel("xfer-b", "BANKB", key_file,
                       fees={"CNY": {"bps": 20}, "USD": {"bps": 20}},
                       same_bank_fees={"CNY": {"tiers": [{"from_amount": 0, "fixed": 80},
                                                         {"from_amount": 1_000_000, "fixed": 150}]}}))
    return [a.describe(), b.describe()]


def router(key_file: Path, config: RoutingConfig = RoutingConfig(), seed: int = 0) -> Router:
    r = Router(pools(key_file), config, seed=seed)
    for name in ("xfer-a", "xfer-b"):  # equal health
        for _ in range(200):
            r.record(name, succeeded=True)
    return r


def pay(bank: str, amount: int = AMOUNT, currency: str = "CNY", merchant: str = "shop") -> RouteRequest:
    return RouteRequest(Asset.BANK_TRANSFER, currency, amount, bank_code=bank, merchant_id=merchant)


def fees_of(decision: Any) -> dict[str, int]:
    return {c.channel: c.fee for c in decision.candidates}


def test_describe_exposes_the_pool_bank_as_home_bank(key_file: Path) -> None:
    a, b = pools(key_file)
    assert (a.home_bank, b.home_bank) == ("BANKA", "BANKB")
    assert a.same_bank_fees == {"CNY": FeeSchedule(bps=5, maximum=100)} and a.fees["CNY"] == FeeSchedule(bps=30)
    plain = create(channel("xfer-c", "BANKC", key_file)).describe()
    assert plain.home_bank == "BANKC" and plain.same_bank_fees == {}


def test_the_payer_goes_to_the_pool_at_its_own_bank_else_to_the_cheaper_general_fee(key_file: Path) -> None:
    greedy = router(key_file, RoutingConfig(exploration=0.0))  # equal means: the fee decides
    # One line per payer bank: chosen channel, candidate fees (xfer-a, xfer-b).
    cases = [
        ("BANKA", "xfer-a", 50, 200),   # same-bank 5 bps at A against B's general 20 bps
        ("BANKB", "xfer-b", 300, 80),   # B's same-bank fixed 80 against A's general 30 bps
        ("BANKC", "xfer-b", 300, 200),  # a third bank: general fees, B is cheaper
        ("", "xfer-b", 300, 200),       # bank unknown: general fees
        ("BANKA", "xfer-a", 50, 200),   # again, after other banks' plans were made
    ]
    for bank, chosen, fee_a, fee_b in cases:
        decision = greedy.decide(pay(bank))
        assert (decision.chosen, fees_of(decision)) == (chosen, {"xfer-a": fee_a, "xfer-b": fee_b}), bank
    # Thompson sampling (the default) still sends most of each bank's payers to its own pool
    # (a fee gap of 0.15 to 0.22 points, against the sampling spread of 200 outcomes).
    sampled = router(key_file, seed=5)
    for bank, own in (("BANKA", "xfer-a"), ("BANKB", "xfer-b")):
        assert [sampled.decide(pay(bank)).chosen for _ in range(400)].count(own) > 220, bank
    # Tiers apply in the same-bank schedule too; a currency without one is priced generally.
    assert fees_of(greedy.decide(pay("BANKB", 2_000_000))) == {"xfer-a": 6_000, "xfer-b": 150}
    assert fees_of(greedy.decide(pay("BANKA", AMOUNT, "USD"))) == {"xfer-a": 300, "xfer-b": 200}


def test_fee_with_and_without_the_bank_code(key_file: Path) -> None:
    r = router(key_file)
    # One line per call: channel, currency, amount, bank code, fee.
    for channel_name, currency, amount, bank, fee in [
        ("xfer-a", "CNY", AMOUNT, "", 300),
        ("xfer-a", "CNY", AMOUNT, "BANKA", 50),
        ("xfer-a", "CNY", 1_000_000, "BANKA", 100),  # held at the same-bank maximum
        ("xfer-a", "CNY", AMOUNT, "BANKB", 300),
        ("xfer-a", "USD", AMOUNT, "BANKA", 300),  # no same-bank schedule for USD
        ("xfer-b", "CNY", AMOUNT, "BANKB", 80),
        ("xfer-b", "CNY", AMOUNT, "BANKA", 200),
        ("xfer-b", "CNY", AMOUNT, "", 200),
    ]:
        assert r.fee(channel_name, currency, amount, bank) == fee, (channel_name, currency, amount, bank)
    assert r.fee("xfer-a", "CNY", AMOUNT) == 300  # the bank code is optional


def test_an_operator_override_replaces_the_general_fee_only(key_file: Path) -> None:
    config = RoutingConfig(exploration=0.0, channels={"xfer-a": ChannelRule(fees={"CNY": FeeSchedule(bps=10)})})
    r = router(key_file, config)
    assert r.fee("xfer-a", "CNY", AMOUNT) == 100 and r.fee("xfer-a", "CNY", AMOUNT, "BANKA") == 50
    assert fees_of(r.decide(pay("BANKC"))) == {"xfer-a": 100, "xfer-b": 200}
    assert r.decide(pay("BANKC")).chosen == "xfer-a" and r.decide(pay("BANKB")).chosen == "xfer-b"


def test_payer_banks_without_a_pool_share_one_plan(key_file: Path) -> None:
    """The plan cache is keyed by bank code only where it changes a price: every payer bank
    without a same-bank schedule shares the plan of an unknown bank."""
    r = router(key_file)
    for bank in ("BANKC", "BANKD", "", "BANKE", "BANKA", "BANKB", "BANKA"):
        r.decide(pay(bank))
    assert len(r._plans) == 3  # "", BANKA, BANKB
    without = Router([Capabilities(c.channel, c.assets, c.currencies, c.flows, fees=c.fees, home_bank=c.home_bank)
                      for c in pools(key_file)])
    for bank in ("BANKA", "BANKB", "BANKC"):
        assert fees_of(without.decide(pay(bank))) == {"xfer-a": 300, "xfer-b": 200}
    assert len(without._plans) == 1


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_the_decision_excludes_like_eligible_and_prices_like_fee(key_file: Path, data: st.DataObject) -> None:
    rules = {name: ChannelRule(
        bank_codes=data.draw(st.sampled_from((None, frozenset({"BANKA", "BANKC"})))),
        fees=data.draw(st.sampled_from(({}, {"CNY": FeeSchedule(fixed=7, bps=10, minimum=20)}))),
        enabled=data.draw(st.integers(0, 5)) > 0) for name in ("xfer-a", "xfer-b")}
    r = router(key_file, RoutingConfig(channels=rules, exploration=data.draw(st.sampled_from((0.0, 1.0)))),
               seed=data.draw(st.integers(0, 9)))
    for _ in range(6):
        request = pay(data.draw(st.sampled_from(("", "BANKA", "BANKB", "BANKC"))),
                      data.draw(st.integers(1, 3_000_000)), data.draw(st.sampled_from(("CNY", "USD"))),
                      data.draw(st.sampled_from(("shop", "other"))))
        decision = r.decide(request)
        for name in ("xfer-a", "xfer-b"):
            assert decision.excluded.get(name, "") == r.eligible(name, request), (name, request)
        assert {c.channel for c in decision.candidates} == {n for n in ("xfer-a", "xfer-b")
                                                            if not r.eligible(n, request)}
        for c in decision.candidates:
            assert c.fee == r.fee(c.channel, request.currency, request.amount, request.bank_code), (c, request)
            assert c.score == c.success - r.config.fee_weight * c.fee / max(request.amount, 1)


@pytest.mark.parametrize(("same_bank_fees", "message"), [
    ({"CNY": {"bps": -1}}, "settings.same_bank_fees.CNY.bps must be a non-negative integer"),
    ({"CNY": {"rate": 3}}, "settings.same_bank_fees.CNY: unknown keys ['rate']"),
    ({"CNY": {"minimum": 10, "maximum": 5}}, "settings.same_bank_fees.CNY.maximum is below its minimum"),
    ({"CNY": 5}, "settings.same_bank_fees.CNY must be a table"),
    ({"EUR": {"bps": 5}}, "settings.same_bank_fees.EUR: not one of settings.currencies"),
    ("cheap", "settings.same_bank_fees must map currency -> fee table"),
])
def test_a_bad_same_bank_fees_table_is_a_config_error(key_file: Path, same_bank_fees: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        TransferSettings.from_config(channel("xfer-a", "BANKA", key_file, same_bank_fees=same_bank_fees))
    assert str(raised.value).startswith(message), str(raised.value)
    assert "6222000000000001" not in str(raised.value)
