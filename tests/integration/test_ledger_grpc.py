"""The Ledger gRPC service over a real socket, on both storage backends.

The server runs in-process on 127.0.0.1:0 (`create_server`), the client uses the
generated stubs on a grpc.aio channel. Bad input must come back as a per-item
result or as INVALID_ARGUMENT with exactly one google.rpc.ErrorInfo, and must
leave the ledger exactly as it was: every such test compares a full picture of
the ledger taken before and after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from dualflow.core.ledger.open_store import store_from_url
from dualflow.core.ledger.service import LedgerService
from dualflow.gateway.server import create_server
from dualflow.v1 import ledger_pb2 as pb
from dualflow.v1 import ledger_pb2_grpc

SERVICE = "dualflow.v1.Ledger"
CNY, USD = "CNY", "USD"
ID_MAX = 2**63 - 1
U64_MAX = 2**64 - 1
INVALID = grpc.StatusCode.INVALID_ARGUMENT

T = pb.CreateTransferResult
OK = pb.CREATE_TRANSFER_RESULT_OK

# Accounts every test starts with: a source, a wallet that cannot overdraw, a
# merchant, and a USD account for currency mismatches.
ISSUER, WALLET, SHOP, DOLLARS = 1, 2, 3, 4
ALL_ACCOUNTS = [ISSUER, WALLET, SHOP, DOLLARS]


@dataclass
class Served:
    channel: grpc.aio.Channel
    stub: ledger_pb2_grpc.LedgerStub
    ledger: LedgerService


@pytest.fixture
async def served(db_url: str) -> AsyncIterator[Served]:
    ledger = LedgerService(store_from_url(db_url), expiry_interval_s=0)
    await ledger.start()
    server, port = create_server(ledger, "127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(channel, ledger_pb2_grpc.LedgerStub(channel), ledger)
    finally:
        await server.stop(None)
        await ledger.stop()


@pytest.fixture
async def funded(served: Served) -> Served:
    """`served` with the four standard accounts and the wallet topped up with 1,000."""
    stub = served.stub
    res = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[
        pb.Account(id=ISSUER, currency=CNY, code=pb.ACCOUNT_CODE_EQUITY),
        pb.Account(id=WALLET, currency=CNY, code=pb.ACCOUNT_CODE_WALLET,
                   flags=pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS | pb.ACCOUNT_FLAG_HISTORY),
        pb.Account(id=SHOP, currency=CNY, code=pb.ACCOUNT_CODE_MERCHANT),
        pb.Account(id=DOLLARS, currency=USD, code=pb.ACCOUNT_CODE_POOL),
    ]))
    assert list(res.results) == [pb.CREATE_ACCOUNT_RESULT_OK] * 4
    res2 = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[tr(1, ISSUER, WALLET, 1_000)]))
    assert list(res2.results) == [OK]
    return served


def tr(id_: int, dr: int, cr: int, amount: int, flags: int = 0, currency: str = CNY, code: int = 1,
       **kw: Any) -> pb.Transfer:
    return pb.Transfer(id=id_, debit_account_id=dr, credit_account_id=cr, amount=amount, currency=currency,
                       code=code, flags=flags, **kw)


def names(results: Any) -> list[str]:
    return [T.Name(r).removeprefix("CREATE_TRANSFER_RESULT_") for r in results]


async def picture(stub: ledger_pb2_grpc.LedgerStub, transfer_ids: list[int]) -> tuple[Any, ...]:
    """Everything a bad request could have changed, as comparable protobufs."""
    accounts = await stub.LookupAccounts(pb.LookupAccountsRequest(ids=ALL_ACCOUNTS + [5, 99]))
    transfers = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=transfer_ids))
    statements = [
        await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=pb.AccountFilter(account_id=a)))
        for a in ALL_ACCOUNTS
    ]
    history = await stub.GetAccountBalances(pb.GetAccountBalancesRequest(filter=pb.AccountFilter(account_id=WALLET)))
    return accounts, transfers, *statements, history


@dataclass
class RichError:
    code: grpc.StatusCode
    info: error_details_pb2.ErrorInfo
    violations: list[tuple[str, str]]


async def rich_error(call: Awaitable[Any], code: grpc.StatusCode, reason: str) -> RichError:
    """Await a call that must fail with `code`; check and decode its google.rpc details."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == code, f"{err.code()}: {err.details()}"
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailing metadata"
    assert isinstance(status, status_pb2.Status)
    kinds = [d.TypeName() for d in status.details]
    assert len(kinds) == len(set(kinds)), f"a detail type appears twice: {kinds}"
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"expected exactly one ErrorInfo, got {kinds}"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert (info.reason, info.domain) == (reason, SERVICE)
    violations: list[tuple[str, str]] = []
    for d in status.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
            assert violations, "a BadRequest without violations"
    return RichError(err.code(), info, violations)


# ----------------------------------------------------------------- happy paths

async def test_every_rpc_happy_path(served: Served) -> None:
    stub = served.stub
    accounts = [
        pb.Account(id=ISSUER, currency=CNY, code=pb.ACCOUNT_CODE_EQUITY, user_data=U64_MAX),
        pb.Account(id=WALLET, currency=CNY, code=pb.ACCOUNT_CODE_WALLET,
                   flags=pb.ACCOUNT_FLAG_DEBITS_MUST_NOT_EXCEED_CREDITS | pb.ACCOUNT_FLAG_HISTORY),
        pb.Account(id=SHOP, currency=CNY, code=pb.ACCOUNT_CODE_MERCHANT),
    ]
    created = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts))
    assert list(created.results) == [pb.CREATE_ACCOUNT_RESULT_OK] * 3
    assert all(ts > 0 for ts in created.timestamps) and list(created.timestamps) == sorted(created.timestamps)
    replay = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=accounts[:1]))
    assert list(replay.results) == [pb.CREATE_ACCOUNT_RESULT_EXISTS]
    assert replay.timestamps[0] == created.timestamps[0]

    moved = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[
        tr(10, ISSUER, WALLET, 1_000, user_data=U64_MAX),
        tr(11, WALLET, SHOP, 300, pb.TRANSFER_FLAG_LINKED),
        tr(12, WALLET, SHOP, 200, pb.TRANSFER_FLAG_PENDING, timeout_s=3600),
        pb.Transfer(id=13, pending_id=12, amount=150, flags=pb.TRANSFER_FLAG_POST_PENDING),
        tr(14, WALLET, SHOP, 5_000),
    ]))
    assert names(moved.results) == ["OK", "OK", "OK", "OK", "EXCEEDS_CREDITS"]
    assert moved.timestamps[4] == 0 and list(moved.timestamps[:4]) == sorted(set(moved.timestamps[:4]))

    found = await stub.LookupAccounts(pb.LookupAccountsRequest(ids=[SHOP, 404, WALLET, ISSUER]))
    assert [a.id for a in found.accounts] == [SHOP, WALLET, ISSUER]
    shop, wallet, issuer = found.accounts
    assert (wallet.debits_pending, wallet.debits_posted, wallet.credits_pending, wallet.credits_posted) == \
        (0, 450, 0, 1_000)
    assert (shop.credits_posted, shop.code, shop.timestamp) == (450, pb.ACCOUNT_CODE_MERCHANT, created.timestamps[2])
    assert issuer.user_data == U64_MAX

    transfers = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=[13, 14, 10]))
    assert [t.id for t in transfers.transfers] == [13, 10]
    post, topup = transfers.transfers
    assert (post.pending_id, post.amount, post.debit_account_id, post.currency, post.code, post.timestamp) == \
        (12, 150, WALLET, CNY, 1, moved.timestamps[3])
    assert topup.user_data == U64_MAX

    page1 = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(
        filter=pb.AccountFilter(account_id=WALLET, limit=2)))
    assert [t.id for t in page1.transfers] == [10, 11] and page1.next_page_token
    page2 = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(
        filter=pb.AccountFilter(account_id=WALLET, limit=2, page_token=page1.next_page_token)))
    assert [t.id for t in page2.transfers] == [12, 13]
    credits = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=pb.AccountFilter(
        account_id=WALLET, side=pb.STATEMENT_SIDE_CREDITS, newest_first=True)))
    assert [t.id for t in credits.transfers] == [10] and credits.next_page_token == ""
    debits = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=pb.AccountFilter(
        account_id=WALLET, side=pb.STATEMENT_SIDE_DEBITS, newest_first=True)))
    assert [t.id for t in debits.transfers] == [13, 12, 11]

    history = await stub.GetAccountBalances(pb.GetAccountBalancesRequest(
        filter=pb.AccountFilter(account_id=WALLET, newest_first=True)))
    assert [(b.transfer_id, b.debits_pending, b.debits_posted, b.credits_posted) for b in history.balances] == [
        (13, 0, 450, 1_000), (12, 200, 300, 1_000), (11, 0, 300, 1_000), (10, 0, 0, 1_000),
    ]
    assert history.next_page_token == ""
    assert [b.timestamp for b in history.balances] == sorted(moved.timestamps[:4], reverse=True)

    # Time bounds anywhere in uint64 are valid: past 2^63 nothing is stored, up to 2^64-1 everything is.
    for flt, expected in (
        (pb.AccountFilter(account_id=WALLET, timestamp_min=2**63), []),
        (pb.AccountFilter(account_id=WALLET, timestamp_min=U64_MAX, newest_first=True), []),
        (pb.AccountFilter(account_id=WALLET, timestamp_max=U64_MAX), [10, 11, 12, 13]),
        (pb.AccountFilter(account_id=WALLET, timestamp_min=moved.timestamps[1], timestamp_max=moved.timestamps[2]),
         [11, 12]),
    ):
        stmt = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=flt))
        assert [t.id for t in stmt.transfers] == expected, flt
        hist = await stub.GetAccountBalances(pb.GetAccountBalancesRequest(filter=flt))
        assert [b.transfer_id for b in hist.balances] == expected, flt


async def test_a_batch_of_8000_transfers_succeeds_in_one_call(funded: Served) -> None:
    stub = funded.stub
    n = 8_000
    batch = [tr(100_000 + i, ISSUER, SHOP, i + 1) for i in range(n)]
    res = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=batch))
    assert len(res.results) == n and set(res.results) == {OK}
    assert list(res.timestamps) == sorted(set(res.timestamps)) and len(res.timestamps) == n
    (shop,) = (await stub.LookupAccounts(pb.LookupAccountsRequest(ids=[SHOP]))).accounts
    assert shop.credits_posted == n * (n + 1) // 2
    # A filter limit of 0 means pages of 1,000.
    page = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=pb.AccountFilter(account_id=SHOP)))
    assert len(page.transfers) == 1_000 and page.next_page_token
    assert page.transfers[0].id == 100_000 and page.transfers[-1].id == 100_999
    found = await stub.LookupTransfers(pb.LookupTransfersRequest(ids=[t.id for t in batch]))
    assert len(found.transfers) == n


# ---------------------------------------------------- bad items, per-item results

BAD_TRANSFERS = [
    # (what, transfer, expected result)
    ("zero amount", tr(20, ISSUER, SHOP, 0), "AMOUNT_INVALID"),
    # uint64 cannot be negative: a client's -1 arrives as 2^64-1 (the same varint on the wire).
    ("amount 2^64-1, a -1 as uint64", tr(21, ISSUER, SHOP, U64_MAX), "AMOUNT_INVALID"),
    ("amount 2^63", tr(22, ISSUER, SHOP, 2**63), "AMOUNT_INVALID"),
    ("a balance past 2^63-1", tr(23, ISSUER, SHOP, ID_MAX), "OVERFLOW"),
    ("unknown currency", tr(24, ISSUER, SHOP, 5, currency="ZZZ"), "CURRENCY_INVALID"),
    ("empty currency", tr(25, ISSUER, SHOP, 5, currency=""), "CURRENCY_INVALID"),
    ("CNY into a USD account", tr(26, ISSUER, DOLLARS, 5), "CURRENCY_MISMATCH"),
    ("USD from a CNY account", tr(27, ISSUER, DOLLARS, 5, currency=USD), "CURRENCY_MISMATCH"),
    ("same account both sides", tr(28, SHOP, SHOP, 5), "SAME_ACCOUNT"),
    ("unknown debit account", tr(29, 99, SHOP, 5), "ACCOUNT_NOT_FOUND"),
    ("unknown credit account", tr(30, ISSUER, 99, 5), "ACCOUNT_NOT_FOUND"),
    ("account id 0", tr(31, 0, SHOP, 5), "ACCOUNT_ID_INVALID"),
    ("account id 2^63", tr(32, ISSUER, 2**63, 5), "ACCOUNT_ID_INVALID"),
    ("transfer id 0", tr(0, ISSUER, SHOP, 5), "ID_INVALID"),
    ("transfer id in the ledger's range", tr(2**63 + 1, ISSUER, SHOP, 5), "ID_INVALID"),
    ("overdraft", tr(33, WALLET, SHOP, 1_001), "EXCEEDS_CREDITS"),
    ("code 0", tr(34, ISSUER, SHOP, 5, code=0), "CODE_INVALID"),
    ("client sets EXPIRY", tr(35, ISSUER, SHOP, 5, pb.TRANSFER_FLAG_EXPIRY), "FLAGS_INVALID"),
    ("pending and post", tr(36, ISSUER, SHOP, 5, pb.TRANSFER_FLAG_PENDING | pb.TRANSFER_FLAG_POST_PENDING),
     "FLAGS_INVALID"),
    ("timestamp set", tr(37, ISSUER, SHOP, 5, timestamp=1), "TIMESTAMP_MUST_BE_ZERO"),
    ("timeout without pending", tr(38, ISSUER, SHOP, 5, timeout_s=10), "TIMEOUT_INVALID"),
    ("post of an unknown pending", pb.Transfer(id=39, pending_id=77, flags=pb.TRANSFER_FLAG_POST_PENDING),
     "PENDING_NOT_FOUND"),
    ("post of a posted transfer", pb.Transfer(id=40, pending_id=1, flags=pb.TRANSFER_FLAG_POST_PENDING),
     "PENDING_NOT_PENDING"),
    ("replay with other fields", tr(1, ISSUER, WALLET, 999), "EXISTS_WITH_DIFFERENT_FIELDS"),
    ("a linked chain left open", tr(41, ISSUER, SHOP, 5, pb.TRANSFER_FLAG_LINKED), "LINKED_EVENT_CHAIN_OPEN"),
]


@pytest.mark.parametrize("what,transfer,expected", BAD_TRANSFERS, ids=[c[0] for c in BAD_TRANSFERS])
def test_bad_transfer_table_is_well_formed(what: str, transfer: pb.Transfer, expected: str) -> None:
    # Guards the table itself: every expected name is a real result, never OK.
    assert expected != "OK" and "CREATE_TRANSFER_RESULT_" + expected in T.keys(), what


async def test_bad_transfers_get_their_result_and_change_nothing(funded: Served) -> None:
    stub = funded.stub
    ids = [t.id for _, t, _ in BAD_TRANSFERS] + [1]
    before = await picture(stub, ids)
    for what, transfer, expected in BAD_TRANSFERS:
        res = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[transfer]))
        assert names(res.results) == [expected], what
        assert list(res.timestamps) == [0], what
    # All of them in one batch: each still gets its own result.
    res = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[t for _, t, _ in BAD_TRANSFERS]))
    assert names(res.results) == [e for _, _, e in BAD_TRANSFERS]
    assert await picture(stub, ids) == before


async def test_a_failing_link_fails_its_chain_and_changes_nothing(funded: Served) -> None:
    stub = funded.stub
    chain = [
        tr(50, WALLET, SHOP, 600, pb.TRANSFER_FLAG_LINKED),
        tr(51, ISSUER, SHOP, 1, pb.TRANSFER_FLAG_LINKED),
        tr(52, WALLET, SHOP, 600),  # 1,200 > 1,000
    ]
    before = await picture(stub, [50, 51, 52])
    res = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=chain))
    assert names(res.results) == ["LINKED_EVENT_FAILED", "LINKED_EVENT_FAILED", "EXCEEDS_CREDITS"]
    assert await picture(stub, [50, 51, 52]) == before


def test_uint64_fields_cannot_carry_negative_or_oversize_values() -> None:
    # Negative and >= 2^64 amounts cannot even be put into a request: the client refuses them.
    for value in (-1, 2**64):
        with pytest.raises(ValueError):
            pb.Transfer(amount=value)
        with pytest.raises(ValueError):
            pb.LookupAccountsRequest(ids=[value])


async def test_bad_accounts_get_their_result_and_change_nothing(funded: Served) -> None:
    stub = funded.stub
    A = pb.CreateAccountResult
    cases = [
        (pb.Account(id=5, currency="ZZZ", code=pb.ACCOUNT_CODE_WALLET), "CURRENCY_INVALID"),
        (pb.Account(id=5, currency=CNY, code=pb.ACCOUNT_CODE_UNSPECIFIED), "CODE_INVALID"),
        (pb.Account(id=5, currency=CNY, code=99), "CODE_INVALID"),
        (pb.Account(id=0, currency=CNY, code=pb.ACCOUNT_CODE_WALLET), "ID_INVALID"),
        (pb.Account(id=2**63, currency=CNY, code=pb.ACCOUNT_CODE_WALLET), "ID_INVALID"),
        (pb.Account(id=5, currency=CNY, code=pb.ACCOUNT_CODE_WALLET, flags=64), "FLAGS_INVALID"),
        (pb.Account(id=5, currency=CNY, code=pb.ACCOUNT_CODE_WALLET, credits_posted=10), "BALANCES_MUST_BE_ZERO"),
        (pb.Account(id=5, currency=CNY, code=pb.ACCOUNT_CODE_WALLET, timestamp=3), "TIMESTAMP_MUST_BE_ZERO"),
        (pb.Account(id=WALLET, currency=USD, code=pb.ACCOUNT_CODE_WALLET), "EXISTS_WITH_DIFFERENT_FIELDS"),
    ]
    before = await picture(funded.stub, [1])
    for account, expected in cases:
        res = await stub.CreateAccounts(pb.CreateAccountsRequest(accounts=[account]))
        assert [A.Name(r).removeprefix("CREATE_ACCOUNT_RESULT_") for r in res.results] == [expected], account
    assert await picture(funded.stub, [1]) == before


# ---------------------------------------------------- whole-request errors

@pytest.mark.parametrize("method", ["CreateAccounts", "CreateTransfers"])
async def test_empty_and_oversize_batches_are_refused(funded: Served, method: str) -> None:
    stub = funded.stub
    if method == "CreateAccounts":
        field = "accounts"
        make = lambda items: stub.CreateAccounts(pb.CreateAccountsRequest(accounts=items))  # noqa: E731
        items = [pb.Account(id=1_000 + i, currency=CNY, code=pb.ACCOUNT_CODE_WALLET) for i in range(8_191)]
        ids_to_check: list[int] = []
    else:
        field = "transfers"
        make = lambda items: stub.CreateTransfers(pb.CreateTransfersRequest(transfers=items))  # noqa: E731
        items = [tr(1_000 + i, ISSUER, SHOP, 1) for i in range(8_191)]
        ids_to_check = [1_000, 9_190]
    before = await picture(stub, ids_to_check)
    lookups_before = await stub.LookupAccounts(pb.LookupAccountsRequest(ids=[1_000, 9_190]))
    assert list(lookups_before.accounts) == []

    empty = await rich_error(make([]), INVALID, "BATCH_EMPTY")
    assert [f for f, _ in empty.violations] == [field]

    big = await rich_error(make(items), INVALID, "BATCH_TOO_LARGE")
    assert [f for f, _ in big.violations] == [field]
    assert "8190" in big.violations[0][1]
    assert dict(big.info.metadata) == {"limit": "8190", "size": "8191"}

    assert await picture(stub, ids_to_check) == before
    assert await stub.LookupAccounts(pb.LookupAccountsRequest(ids=[1_000, 9_190])) == lookups_before

    # One item fewer is within the limit.
    res = await make(items[:8_190])
    assert len(res.results) == 8_190 and set(res.results) == {1}  # OK is 1 in both result enums


async def test_oversize_lookups_are_refused(funded: Served) -> None:
    for call in (
        funded.stub.LookupAccounts(pb.LookupAccountsRequest(ids=list(range(1, 8_192)))),
        funded.stub.LookupTransfers(pb.LookupTransfersRequest(ids=list(range(1, 8_192)))),
    ):
        err = await rich_error(call, INVALID, "BATCH_TOO_LARGE")
        assert [f for f, _ in err.violations] == ["ids"]
    ok = await funded.stub.LookupAccounts(pb.LookupAccountsRequest(ids=list(range(1, 8_191))))
    assert [a.id for a in ok.accounts] == ALL_ACCOUNTS


MALFORMED = [b"\xff", b"\x07", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05\x08"]


@pytest.mark.parametrize("method", [
    "CreateAccounts", "CreateTransfers", "LookupAccounts", "LookupTransfers", "GetAccountTransfers",
    "GetAccountBalances",
])
async def test_malformed_messages_are_invalid_argument_and_change_nothing(funded: Served, method: str) -> None:
    raw_call = funded.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None,
                                          response_deserializer=None)
    before = await picture(funded.stub, [1])
    for garbage in MALFORMED:
        err = await rich_error(raw_call(garbage), INVALID, "MALFORMED_REQUEST")
        assert err.violations == []
    assert await picture(funded.stub, [1]) == before
    # The same raw path works with well-formed bytes: the garbage was the only problem.
    if method == "LookupAccounts":
        answer = await raw_call(pb.LookupAccountsRequest(ids=[WALLET]).SerializeToString())
        assert [a.id for a in pb.LookupAccountsResponse.FromString(answer).accounts] == [WALLET]


@pytest.mark.parametrize("token", ["not a token!", "AAAA", "AQAAAAAAAAAB"])
async def test_a_bad_page_token_is_refused(funded: Served, token: str) -> None:
    stub = funded.stub
    flt = pb.AccountFilter(account_id=WALLET, page_token=token)
    await rich_error(stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=flt)), INVALID,
                     "PAGE_TOKEN_INVALID")
    await rich_error(stub.GetAccountBalances(pb.GetAccountBalancesRequest(filter=flt)), INVALID,
                     "PAGE_TOKEN_INVALID")


async def test_a_token_from_the_other_direction_is_refused(funded: Served) -> None:
    stub = funded.stub
    more = await stub.CreateTransfers(pb.CreateTransfersRequest(transfers=[tr(60 + i, ISSUER, WALLET, 1)
                                                                           for i in range(3)]))
    assert set(more.results) == {OK}
    first = await stub.GetAccountTransfers(pb.GetAccountTransfersRequest(
        filter=pb.AccountFilter(account_id=WALLET, limit=2)))
    assert first.next_page_token
    backwards = pb.AccountFilter(account_id=WALLET, limit=2, newest_first=True, page_token=first.next_page_token)
    await rich_error(stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=backwards)), INVALID,
                     "PAGE_TOKEN_INVALID")


async def test_filters_with_account_id_0_and_other_bad_fields_are_refused(funded: Served) -> None:
    stub = funded.stub
    cases = [
        (pb.AccountFilter(account_id=0), ["filter.account_id"]),
        (pb.AccountFilter(account_id=2**63), ["filter.account_id"]),
        (pb.AccountFilter(account_id=WALLET, limit=8_191), ["filter.limit"]),
        (pb.AccountFilter(account_id=WALLET, timestamp_min=10, timestamp_max=9), ["filter.timestamp_min"]),
        (pb.AccountFilter(account_id=0, limit=9_000), ["filter.account_id", "filter.limit"]),
    ]
    for flt, fields in cases:
        for call in (stub.GetAccountTransfers(pb.GetAccountTransfersRequest(filter=flt)),
                     stub.GetAccountBalances(pb.GetAccountBalancesRequest(filter=flt))):
            err = await rich_error(call, INVALID, "FILTER_INVALID")
            assert [f for f, _ in err.violations] == fields
    # A request without any filter is a filter with account_id 0.
    await rich_error(stub.GetAccountTransfers(pb.GetAccountTransfersRequest()), INVALID, "FILTER_INVALID")


# ---------------------------------------------------- health and reflection

async def test_health_reports_serving(served: Served) -> None:
    health = health_pb2_grpc.HealthStub(served.channel)
    for service in ("", SERVICE):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_ledger(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
    ]
    answers = [a async for a in stub.ServerReflectionInfo(iter(requests))]
    assert len(answers) == 2
    listed = {s.name for s in answers[0].list_services_response.service}
    assert SERVICE in listed and "grpc.health.v1.Health" in listed
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in answers[1].file_descriptor_response.file_descriptor_proto]
    ledger_file = next(f for f in files if f.package == "dualflow.v1")
    (service,) = [s for s in ledger_file.service if s.name == "Ledger"]
    assert [m.name for m in service.method] == [
        "CreateAccounts", "CreateTransfers", "LookupAccounts", "LookupTransfers", "GetAccountTransfers",
        "GetAccountBalances",
    ]
