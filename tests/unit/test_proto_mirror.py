"""core/ledger/model.py and core/payments/model.py mirror the enums of
dualflow/v1/ledger.proto and payments.proto one to one.

Result codes and flag bits are a released contract: the gateway converts by
number, so a name or number that drifts on one side silently changes meaning.
Proto names carry the enum's prefix (CREATE_TRANSFER_RESULT_OK); the proto's
zero value UNSPECIFIED has no Python member, since the core never produces it.
"""

from __future__ import annotations

import enum

import pytest
from google.protobuf.descriptor import EnumDescriptor

from dualflow.core.ledger import model
from dualflow.core.payments import model as payments_model
from dualflow.v1 import ledger_pb2, payments_pb2

PROTO_FILES = (ledger_pb2.DESCRIPTOR, payments_pb2.DESCRIPTOR)

MIRRORS: list[tuple[type[enum.IntEnum] | type[enum.IntFlag], str, str]] = [
    # python enum                  proto enum              proto prefix
    (model.AccountCode,            "AccountCode",          "ACCOUNT_CODE_"),
    (model.AccountFlags,           "AccountFlag",          "ACCOUNT_FLAG_"),
    (model.TransferFlags,          "TransferFlag",         "TRANSFER_FLAG_"),
    (model.CreateAccountResult,    "CreateAccountResult",  "CREATE_ACCOUNT_RESULT_"),
    (model.CreateTransferResult,   "CreateTransferResult", "CREATE_TRANSFER_RESULT_"),
    (payments_model.Asset,         "Asset",                "ASSET_"),
    (payments_model.PaymentStatus, "PaymentStatus",        "PAYMENT_STATUS_"),
    (payments_model.RefundStatus,  "RefundStatus",         "REFUND_STATUS_"),
]
# Proto enums with no Python enum, and why.
NOT_MIRRORED = {
    "StatementSide": "the core's AccountFilter carries two booleans (debits, credits) instead",
}


def _proto(name: str) -> EnumDescriptor:
    for file in PROTO_FILES:
        if name in file.enum_types_by_name:
            return file.enum_types_by_name[name]
    raise KeyError(name)


def _python_members(py: type[enum.Enum]) -> dict[str, int]:
    # __members__, not iteration: an IntFlag iterates without its zero member (NONE).
    return {name: int(member) for name, member in py.__members__.items()}


@pytest.mark.parametrize(("py", "proto_name", "prefix"), MIRRORS, ids=[m[1] for m in MIRRORS])
def test_names_and_numbers_match(py: type[enum.Enum], proto_name: str, prefix: str) -> None:
    proto = _proto(proto_name)
    proto_members: dict[str, int] = {}
    for value in proto.values:
        assert value.name.startswith(prefix), f"{value.name} lacks the prefix {prefix}"
        proto_members[value.name.removeprefix(prefix)] = value.number
    python_members = _python_members(py)
    if "UNSPECIFIED" in proto_members:
        assert proto_members.pop("UNSPECIFIED") == 0
        assert 0 not in python_members.values(), f"{py.__name__} has a zero member but the proto calls 0 UNSPECIFIED"
    assert python_members == proto_members


@pytest.mark.parametrize(("py", "proto_name", "prefix"), MIRRORS, ids=[m[1] for m in MIRRORS])
def test_no_aliases(py: type[enum.Enum], proto_name: str, prefix: str) -> None:
    numbers = list(_python_members(py).values())
    assert len(numbers) == len(set(numbers)), f"{py.__name__} has two names for one number"
    assert not _proto(proto_name).GetOptions().allow_alias


def test_every_proto_enum_is_mirrored_or_explained() -> None:
    mirrored = {m[1] for m in MIRRORS}
    declared = {name for file in PROTO_FILES for name in file.enum_types_by_name}
    assert declared == mirrored | set(NOT_MIRRORED)


@pytest.mark.parametrize("py", [model.AccountFlags, model.TransferFlags])
def test_flags_are_single_bits(py: type[enum.IntFlag]) -> None:
    for name, number in _python_members(py).items():
        assert name == "NONE" if number == 0 else number & (number - 1) == 0, f"{py.__name__}.{name} = {number}"


def test_derived_constants_agree_with_the_enums() -> None:
    account_bits = [int(v) for v in model.AccountFlags.__members__.values()]
    transfer_bits = [int(v) for v in model.TransferFlags.__members__.values()]
    assert model.ACCOUNT_FLAGS_ALL == sum(account_bits)
    assert model.TRANSFER_FLAGS_CLIENT == sum(transfer_bits) - model.TransferFlags.EXPIRY
    assert model.ACCOUNT_CODES == {v.number for v in _proto("AccountCode").values if v.number}
    assert model.ID_MAX == 2**63 - 1 and model.EXPIRY_ID_BASE == model.ID_MAX + 1
