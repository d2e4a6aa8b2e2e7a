"""What the clearing service is configured with: its pools, currencies, cut-off, caps, settlement.

Plain data; `gateway/config.py` builds it from the `[clearing]` table of the
platform's TOML and validates it there (with key paths), so a `ClearingSettings`
that exists is usable. Pool names are bounded and configured because they are
metric labels and parts of ledger account names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from .caps import NO_CAPS, CapPolicy, NetDebitCaps

POOL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A pool's account as the bank-transfer rail names it (the rail's own alphabet).
BANK_CODE: Final = re.compile(r"[A-Za-z0-9]{2,16}")
ACCOUNT_NUMBER: Final = re.compile(r"[0-9]{6,34}")


@dataclass(frozen=True, slots=True)
class RailAccount:
    """The bank account a pool stands for: settlement transfers debit the payer pool's and credit
    the payee pool's."""

    bank_code: str
    number: str = field(repr=False)
    name: str  # the holder name the bank checks


@dataclass(frozen=True, slots=True)
class ClearingSettings:
    pools: tuple[str, ...] = ()  # one reserve-fund pool per bank; obligations name only these
    currencies: tuple[str, ...] = ()  # pool accounts and obligations exist in these
    # Cut-off: windows close when the clock passes a multiple of `window_s` (plus
    # `cutoff_offset_s`), e.g. 86400 and 61200 for 17:00 UTC daily; 0: only CloseWindow closes.
    window_s: int = 0
    cutoff_offset_s: int = 0
    cap_policy: CapPolicy = CapPolicy.REFUSE
    caps: NetDebitCaps = NO_CAPS
    settlement_retries: int = 2  # a failed settlement transfer is sent anew this often, then carried
    # How often the settlement driver walks settling windows (re-sending what has no final answer);
    # 0: no background driver, `ClearingService.drive()` is called by hand (tests).
    settle_interval_s: float = 1.0
    invariant_interval_s: float = 60.0  # how often the pool invariant gauge is recomputed; 0: never
    # Settlement over the bank-transfer rail: every pool's bank account (all pools or none), and
    # the transfer channel that carries the transfers ("": the only transfer channel configured).
    rail_accounts: Mapping[str, RailAccount] = field(default_factory=dict)
    settlement_channel: str = ""
    # Where parties' money sits (clearing/attribution.py): a merchant's pool, and the pool of
    # whoever has no home yet ("": the first pool).
    default_pool: str = ""
    merchant_pools: Mapping[str, str] = field(default_factory=dict)
    # Channels that collect straight into a pool and pay out from it: a transfer channel whose own
    # account (settings.pool_account) is a pool's rail account. Derived by gateway/config.py.
    channel_pools: Mapping[str, str] = field(default_factory=dict)

    @property
    def home_pool(self) -> str:
        """The pool of a party with no home and no configured pool."""
        return self.default_pool or (self.pools[0] if self.pools else "")

    def next_cutoff_ns(self, after_ns: int) -> int | None:
        """The first cut-off strictly after `after_ns`; None when windows close only on request."""
        if self.window_s <= 0:
            return None
        period = self.window_s * 10**9
        offset = (self.cutoff_offset_s % self.window_s) * 10**9
        return ((after_ns - offset) // period + 1) * period + offset
