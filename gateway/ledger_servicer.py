"""The `dualflow.v1.Ledger` gRPC service: protobuf <-> domain, nothing else.

Validation, results and errors come from core.ledger; the interceptor maps
domain errors to statuses. Conversions are written out field by field because
this is the hot path of an 8,000-transfer batch.
"""

from __future__ import annotations

import grpc

from dualflow.core.ledger.model import Account, AccountFilter, BalanceSnapshot, Transfer
from dualflow.core.ledger.service import PAGE_DEFAULT, LedgerService
from dualflow.v1 import ledger_pb2 as pb
from dualflow.v1 import ledger_pb2_grpc


def account_from_pb(a: pb.Account) -> Account:
    return Account(
        a.id, a.currency, a.code, a.flags, a.user_data, a.timestamp,
        a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
    )


def account_to_pb(a: Account) -> pb.Account:
    return pb.Account(
        id=a.id, currency=a.currency, code=a.code, flags=a.flags, user_data=a.user_data,  # type: ignore[arg-type]
        timestamp=a.timestamp, debits_pending=a.debits_pending, debits_posted=a.debits_posted,
        credits_pending=a.credits_pending, credits_posted=a.credits_posted,
    )


def transfer_from_pb(t: pb.Transfer) -> Transfer:
    return Transfer(
        t.id, t.debit_account_id, t.credit_account_id, t.amount, t.pending_id, t.currency,
        t.code, t.flags, t.user_data, t.timeout_s, t.timestamp,
    )


def transfer_to_pb(t: Transfer) -> pb.Transfer:
    return pb.Transfer(
        id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id,
        amount=t.amount, pending_id=t.pending_id, currency=t.currency, code=t.code, flags=t.flags,
        user_data=t.user_data, timeout_s=t.timeout_s, timestamp=t.timestamp,
    )


def balance_to_pb(b: BalanceSnapshot) -> pb.AccountBalance:
    return pb.AccountBalance(
        timestamp=b.timestamp, transfer_id=b.transfer_id, debits_pending=b.debits_pending,
        debits_posted=b.debits_posted, credits_pending=b.credits_pending, credits_posted=b.credits_posted,
    )


def filter_from_pb(f: pb.AccountFilter) -> AccountFilter:
    side = f.side
    return AccountFilter(
        account_id=f.account_id,
        timestamp_min=f.timestamp_min,
        timestamp_max=f.timestamp_max,
        limit=f.limit or PAGE_DEFAULT,
        newest_first=f.newest_first,
        debits=side in (pb.STATEMENT_SIDE_BOTH, pb.STATEMENT_SIDE_DEBITS),
        credits=side in (pb.STATEMENT_SIDE_BOTH, pb.STATEMENT_SIDE_CREDITS),
    )


class LedgerServicer(ledger_pb2_grpc.LedgerServicer):
    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger

    async def CreateAccounts(
        self, request: pb.CreateAccountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateAccountsResponse:
        self.ledger.admit(len(request.accounts), "accounts")
        result = await self.ledger.create_accounts([account_from_pb(a) for a in request.accounts])
        return pb.CreateAccountsResponse(results=result.results, timestamps=result.timestamps)  # type: ignore[arg-type]

    async def CreateTransfers(
        self, request: pb.CreateTransfersRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTransfersResponse:
        # Admission first: refusing an overloaded 8,000-item batch must not cost its conversion.
        self.ledger.admit(len(request.transfers), "transfers")
        result = await self.ledger.create_transfers([transfer_from_pb(t) for t in request.transfers])
        return pb.CreateTransfersResponse(results=result.results, timestamps=result.timestamps)  # type: ignore[arg-type]

    async def LookupAccounts(
        self, request: pb.LookupAccountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.LookupAccountsResponse:
        accounts = await self.ledger.lookup_accounts(list(request.ids))
        return pb.LookupAccountsResponse(accounts=[account_to_pb(a) for a in accounts])

    async def LookupTransfers(
        self, request: pb.LookupTransfersRequest, context: grpc.aio.ServicerContext
    ) -> pb.LookupTransfersResponse:
        transfers = await self.ledger.lookup_transfers(list(request.ids))
        return pb.LookupTransfersResponse(transfers=[transfer_to_pb(t) for t in transfers])

    async def GetAccountTransfers(
        self, request: pb.GetAccountTransfersRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountTransfersResponse:
        transfers, token = await self.ledger.account_transfers(
            filter_from_pb(request.filter), request.filter.page_token
        )
        return pb.GetAccountTransfersResponse(
            transfers=[transfer_to_pb(t) for t in transfers], next_page_token=token
        )

    async def GetAccountBalances(
        self, request: pb.GetAccountBalancesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountBalancesResponse:
        balances, token = await self.ledger.account_balances(
            filter_from_pb(request.filter), request.filter.page_token
        )
        return pb.GetAccountBalancesResponse(
            balances=[balance_to_pb(b) for b in balances], next_page_token=token
        )
