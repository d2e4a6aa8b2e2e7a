"""Net debit caps: a pool may not owe, net, more than its limit within a window.

`PositionBook` is the live side of an open window: every obligation offered to
it is admitted (it counts in the positions and will be netted at cut-off),
queued, or refused. A pool's net debit is what it owes minus what it is owed
(0 when it is a net creditor); its cap is per currency (`NetDebitCaps`). An
obligation that would take its debtor's net debit beyond the cap is refused
(`CapPolicy.REFUSE`: `NetDebitCapExceeded` is raised and nothing is kept, so the
same id may be offered again later) or queued (`CapPolicy.QUEUE`).

Queues are FIFO per debtor and currency: while a debtor has obligations
waiting, its new ones wait behind them even if they would fit (no overtaking,
so the order a pool's obligations take effect is the order they arose). Each
admission that credits a pool retries that pool's queue, and so on
transitively; raising caps (`reconfigure`) retries every queue. What is still
queued at cut-off is handed to the next window (`take_queued`), where it is
offered again.

Invariant (asserted on each admission): no pool's net debit exceeds its cap
because of an admitted obligation. Two things may leave a pool beyond its cap,
and both are deliberate: lowering a cap (positions already admitted stay), and
a forced admission (`force=True`), meant for a failed settlement carried into
the next window: that debt exists already and must not be refused or lost.
Either way the pool's next obligations wait (or are refused) until it is back
within its cap.

Idempotency: an obligation id already admitted or queued here answers EXISTS if
its fields are the same and raises `ObligationConflict` if not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from .errors import InvalidObligation, NetDebitCapExceeded, ObligationConflict
from .netting import Obligation


class CapPolicy(str, Enum):
    REFUSE = "refuse"
    QUEUE = "queue"


class Admission(str, Enum):
    ADMITTED = "admitted"  # counts in the positions now
    QUEUED = "queued"  # waits for its debtor's position to allow it
    EXISTS = "exists"  # the same obligation was offered before; nothing changed


@dataclass(frozen=True, slots=True)
class NetDebitCaps:
    """Caps in minor units per (pool, currency); `default_minor` for pools not listed
    (None: no cap)."""

    per_pool: Mapping[tuple[str, str], int] = field(default_factory=dict)
    default_minor: int | None = None

    def __post_init__(self) -> None:
        for key, cap in [*self.per_pool.items(), (("*", "*"), self.default_minor)]:
            if cap is not None and (type(cap) is not int or cap < 0):
                raise InvalidObligation(f"net debit cap for {key} must be a non-negative integer, not {cap!r}")

    def cap(self, pool: str, currency: str) -> int | None:
        return self.per_pool.get((pool, currency), self.default_minor)


NO_CAPS = NetDebitCaps()


@dataclass(slots=True)
class PoolPosition:
    """One pool's admitted obligations in one currency."""

    pool: str
    currency: str
    debits_minor: int = 0  # what it owes (gross)
    credits_minor: int = 0  # what it is owed (gross)

    @property
    def net_minor(self) -> int:
        """Owed minus owing: positive for a net creditor."""
        return self.credits_minor - self.debits_minor

    @property
    def net_debit_minor(self) -> int:
        return max(self.debits_minor - self.credits_minor, 0)


@dataclass(frozen=True, slots=True)
class Submission:
    """What offering one obligation did: its own admission, and every obligation admitted as a
    consequence (it first if it was admitted, then queued ones it released, in admission order)."""

    admission: Admission
    admitted: tuple[Obligation, ...] = ()

    @property
    def released(self) -> tuple[Obligation, ...]:
        return self.admitted[1:] if self.admission is Admission.ADMITTED else self.admitted


class PositionBook:
    def __init__(self, caps: NetDebitCaps = NO_CAPS, policy: CapPolicy = CapPolicy.REFUSE) -> None:
        self.caps = caps
        self.policy = policy
        self._positions: dict[tuple[str, str], PoolPosition] = {}
        self._known: dict[str, tuple[Obligation, Admission]] = {}  # id -> (obligation, ADMITTED|QUEUED)
        self._queues: dict[tuple[str, str], deque[tuple[int, Obligation]]] = {}  # (debtor, currency)
        self._seq = 0  # queue order across debtors, so take_queued answers in arrival order
        self.caps_hit = 0  # obligations refused or queued by a cap (a metric)

    # ------------------------------------------------------------ reading

    def position(self, pool: str, currency: str) -> PoolPosition:
        return self._positions.get((pool, currency)) or PoolPosition(pool, currency)

    def positions(self) -> list[PoolPosition]:
        """Every pool's position, by (currency, pool)."""
        return [self._positions[k] for k in sorted(self._positions, key=lambda k: (k[1], k[0]))]

    def queued(self) -> list[Obligation]:
        """Obligations waiting, in the order they arrived."""
        return [o for _, o in sorted(item for q in self._queues.values() for item in q)]

    def state_of(self, obligation_id: str) -> Admission | None:
        known = self._known.get(obligation_id)
        return None if known is None else known[1]

    # ------------------------------------------------------------ writing

    def submit(self, obligation: Obligation, *, force: bool = False) -> Submission:
        """Admit, queue or refuse `obligation` (see the module docstring); `force` admits it
        whatever its debtor's cap says."""
        known = self._known.get(obligation.obligation_id)
        if known is not None:
            if known[0] != obligation:
                raise ObligationConflict(
                    f"obligation {obligation.obligation_id} exists with other fields",
                    metadata={"obligation_id": obligation.obligation_id})
            return Submission(Admission.EXISTS)
        key = (obligation.debtor_pool, obligation.currency)
        if force or (not self._queues.get(key) and self._fits(obligation)):
            self._admit(obligation, force=force)
            return Submission(Admission.ADMITTED, (obligation, *self._release(obligation)))
        self.caps_hit += 1
        if self.policy is CapPolicy.REFUSE:
            cap = self.caps.cap(*key)
            assert cap is not None
            raise NetDebitCapExceeded(obligation.debtor_pool, obligation.currency, cap,
                                      obligation.amount_minor - self.position(*key).net_minor,
                                      obligation.obligation_id)
        self._seq += 1
        self._queues.setdefault(key, deque()).append((self._seq, obligation))
        self._known[obligation.obligation_id] = (obligation, Admission.QUEUED)
        return Submission(Admission.QUEUED)

    def reconfigure(self, caps: NetDebitCaps) -> tuple[Obligation, ...]:
        """New caps; every queue is retried. Answers the obligations admitted by it."""
        self.caps = caps
        return tuple(self._drain(sorted(self._queues, key=lambda k: self._queues[k][0][0])))

    def take_queued(self) -> list[Obligation]:
        """Remove and answer everything still queued (in arrival order), for the next window."""
        out = self.queued()
        for o in out:
            del self._known[o.obligation_id]
        self._queues.clear()
        return out

    # ------------------------------------------------------------ inside

    def _fits(self, obligation: Obligation) -> bool:
        cap = self.caps.cap(obligation.debtor_pool, obligation.currency)
        if cap is None:
            return True
        after = obligation.amount_minor - self.position(obligation.debtor_pool, obligation.currency).net_minor
        return after <= cap

    def _admit(self, obligation: Obligation, *, force: bool) -> None:
        debtor = self._positions.setdefault((obligation.debtor_pool, obligation.currency),
                                            PoolPosition(obligation.debtor_pool, obligation.currency))
        creditor = self._positions.setdefault((obligation.creditor_pool, obligation.currency),
                                              PoolPosition(obligation.creditor_pool, obligation.currency))
        debtor.debits_minor += obligation.amount_minor
        creditor.credits_minor += obligation.amount_minor
        self._known[obligation.obligation_id] = (obligation, Admission.ADMITTED)
        cap = self.caps.cap(debtor.pool, debtor.currency)
        assert force or cap is None or debtor.net_debit_minor <= cap, (obligation, cap)

    def _release(self, admitted: Obligation) -> list[Obligation]:
        return self._drain([(admitted.creditor_pool, admitted.currency)]) if self._queues else []

    def _drain(self, keys: list[tuple[str, str]]) -> list[Obligation]:
        """Admit queue heads that now fit, following each admission to its creditor's queue."""
        released: list[Obligation] = []
        work = deque(keys)
        while work:
            key = work.popleft()
            queue = self._queues.get(key)
            while queue and self._fits(queue[0][1]):
                _, obligation = queue.popleft()
                self._admit(obligation, force=False)
                released.append(obligation)
                work.append((obligation.creditor_pool, obligation.currency))
            if queue is not None and not queue:
                del self._queues[key]
        return released

    @classmethod
    def restore(cls, caps: NetDebitCaps, policy: CapPolicy, admitted: Iterable[Obligation],
                queued: Iterable[Obligation]) -> PositionBook:
        """A book rebuilt from what a window persisted: admitted obligations as they were (caps
        are not re-checked: they were admitted under the caps of their time), queued ones back in
        their queues in the same order."""
        book = cls(caps, policy)
        for o in admitted:
            book._admit(o, force=True)
        for o in queued:
            book._seq += 1
            book._queues.setdefault((o.debtor_pool, o.currency), deque()).append((book._seq, o))
            book._known[o.obligation_id] = (o, Admission.QUEUED)
        return book
