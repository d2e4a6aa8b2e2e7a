"""Minor units to text and back, exactly, for currencies with 0, 2, 3 and 4 decimals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dualflow.core.money import (
    AMOUNT_MAX,
    CURRENCIES,
    UnknownCurrency,
    exponent,
    format_minor,
    is_currency,
    parse_major,
)


@pytest.mark.parametrize(("currency", "digits"), [("JPY", 0), ("KRW", 0), ("CNY", 2), ("USD", 2),
                                                  ("KWD", 3), ("BHD", 3), ("CLF", 4)])
def test_exponent(currency: str, digits: int) -> None:
    assert exponent(currency) == digits
    assert is_currency(currency) and currency in CURRENCIES


@pytest.mark.parametrize(("amount_minor", "currency", "text"), [
    # amount_minor            currency  text
    (12345,                   "CNY",    "123.45 CNY"),
    (5,                       "CNY",    "0.05 CNY"),
    (-5,                      "CNY",    "-0.05 CNY"),
    (0,                       "CNY",    "0.00 CNY"),
    (100,                     "USD",    "1.00 USD"),
    (123456789,               "CNY",    "1,234,567.89 CNY"),
    (AMOUNT_MAX,              "CNY",    "92,233,720,368,547,758.07 CNY"),
    (-AMOUNT_MAX - 1,         "CNY",    "-92,233,720,368,547,758.08 CNY"),
    (12345,                   "JPY",    "12,345 JPY"),
    (0,                       "JPY",    "0 JPY"),
    (-7,                      "JPY",    "-7 JPY"),
    (1234567,                 "KWD",    "1,234.567 KWD"),
    (-1,                      "KWD",    "-0.001 KWD"),
    (1,                       "CLF",    "0.0001 CLF"),
])
def test_format_minor(amount_minor: int, currency: str, text: str) -> None:
    assert format_minor(amount_minor, currency) == text


@pytest.mark.parametrize(("text", "currency", "amount_minor"), [
    ("123.45",   "CNY", 12345),
    ("0.5",      "CNY", 50),
    ("1",        "CNY", 100),
    ("-0.01",    "CNY", -1),
    ("0",        "CNY", 0),
    ("1.50",     "CNY", 150),
    ("1.500",    "CNY", 150),     # trailing zeros are not extra precision
    ("1e2",      "CNY", 10000),
    ("12345",    "JPY", 12345),
    ("1.0",      "JPY", 1),
    ("1.234",    "KWD", 1234),
    ("0.001",    "KWD", 1),
    ("92233720368547758.07", "CNY", AMOUNT_MAX),
])
def test_parse_major(text: str, currency: str, amount_minor: int) -> None:
    got = parse_major(text, currency)
    assert got == amount_minor and type(got) is int


@pytest.mark.parametrize(("text", "currency", "message"), [
    ("1.234",     "CNY", "more than 2 decimal places"),
    ("0.001",     "CNY", "more than 2 decimal places"),
    ("1.5",       "JPY", "more than 0 decimal places"),
    ("1.2345",    "KWD", "more than 3 decimal places"),
    ("abc",       "CNY", "not a number"),
    ("",          "CNY", "not a number"),
    ("1,234.56",  "CNY", "not a number"),
    ("12.3 CNY",  "CNY", "not a number"),
    ("NaN",       "CNY", "not a finite number"),
    ("sNaN",      "CNY", "not a finite number"),
    ("Infinity",  "CNY", "not a finite number"),
    ("-inf",      "JPY", "not a finite number"),
])
def test_parse_major_rejects(text: str, currency: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_major(text, currency)


@pytest.mark.parametrize("code", ["XXX", "cny", "", "CNYY", "XAU", "BTC"])
def test_unknown_currency(code: str) -> None:
    assert not is_currency(code)
    with pytest.raises(UnknownCurrency):
        exponent(code)
    with pytest.raises(UnknownCurrency):
        format_minor(1, code)
    with pytest.raises(UnknownCurrency):
        parse_major("1", code)
    assert issubclass(UnknownCurrency, ValueError)


def test_every_currency_is_three_upper_case_letters_with_a_sane_exponent() -> None:
    assert len(CURRENCIES) > 150
    for code in CURRENCIES:
        assert len(code) == 3 and code.isascii() and code.isupper(), code
        assert exponent(code) in (0, 2, 3, 4), code


@given(st.integers(-(2**63), 2**63 - 1), st.sampled_from(sorted(CURRENCIES)))
def test_format_then_parse_round_trips(amount_minor: int, currency: str) -> None:
    text = format_minor(amount_minor, currency)
    number, code = text.split(" ")
    assert code == currency
    assert parse_major(number.replace(",", ""), currency) == amount_minor
