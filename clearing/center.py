"""The clearing center: one open window at a time, closed windows settling beside it.

`ClearingCenter` is what the wiring talks to (the ledger's pool movements
record obligations, a Clearing gRPC service reads positions and closes windows,
a settlement driver executes instructions through the payment gateway's
transfer rail and reports their answers). It owns the sequence of windows and
the hand-overs between them:

* at cut-off (`close`) the open window is netted and a new one opens at once;
  obligations still queued by a cap move into it (offered again under its caps);
* at the end of a settlement (`finish`) each failed, unretried instruction
  becomes an obligation in the window open at that time, admitted whatever the
  caps say (the debt exists already);
* obligation ids are unique across windows: offering an id again answers
  EXISTS (same fields) or raises `ObligationConflict` (other fields), whichever
  window holds it.

Pure and in memory; nothing here reads a clock or does I/O. The persistent
service (clearing/service.py, clearing/store.py) stores each window's fields
(see window.py) and the id index, and rebuilds a center with `restore`. It keeps
only the live windows (open, closed, settling) in memory: a finished window is
`evict`ed once stored, and the ids of its obligations are answered from the
store from then on.
"""

from __future__ import annotations

from collections.abc import Callable

from .caps import NO_CAPS, Admission, CapPolicy, NetDebitCaps, PoolPosition, Submission
from .errors import ObligationConflict, UnknownWindow
from .netting import NettingOptions, NettingResult, Obligation
from .window import InstructionState, SettlementInstruction, SettlementWindow, WindowState


def default_window_id(seq: int) -> str:
    return f"W{seq:06d}"


class ClearingCenter:
    def __init__(self, caps: NetDebitCaps = NO_CAPS, policy: CapPolicy = CapPolicy.REFUSE, *,
                 netting_options: NettingOptions = NettingOptions(),
                 window_id: Callable[[int], str] = default_window_id) -> None:
        self.caps = caps
        self.policy = policy
        self.netting_options = netting_options
        self._window_id = window_id
        self.windows: dict[str, SettlementWindow] = {}  # in opening order
        self._seq = 0
        self._ids: dict[str, Obligation] = {}  # every obligation admitted or queued, any live window
        self._where: dict[str, str] = {}  # obligation id -> the live window admitting (or queueing) it
        self.current = self._open()

    # ------------------------------------------------------------ the open window

    def record(self, obligation: Obligation, *, force: bool = False) -> Submission:
        known = self._ids.get(obligation.obligation_id)
        if known is not None:
            if known != obligation:
                raise ObligationConflict(f"obligation {obligation.obligation_id} exists with other fields",
                                         metadata={"obligation_id": obligation.obligation_id})
            return Submission(Admission.EXISTS)
        submission = self.current.record(obligation, force=force)
        self._ids[obligation.obligation_id] = obligation
        self._where[obligation.obligation_id] = self.current.window_id
        return submission

    def locate(self, obligation_id: str) -> tuple[Obligation, str, Admission] | None:
        """A live window's obligation: itself, the window holding it, and ADMITTED or QUEUED there
        (None if no live window knows the id)."""
        known = self._ids.get(obligation_id)
        if known is None:
            return None
        window = self.windows[self._where[obligation_id]]
        state = window.book.state_of(obligation_id) if window.state is WindowState.OPEN else Admission.ADMITTED
        assert state in (Admission.ADMITTED, Admission.QUEUED), (obligation_id, state)
        return known, window.window_id, state

    def positions(self) -> list[PoolPosition]:
        """The open window's live positions, by (currency, pool)."""
        return self.current.positions()

    def reconfigure(self, caps: NetDebitCaps) -> tuple[Obligation, ...]:
        """New caps, from the open window on; answers the queued obligations they admit."""
        self.caps = caps
        return self.current.reconfigure(caps)

    # ------------------------------------------------------------ cut-off and settlement

    def close(self) -> tuple[SettlementWindow, NettingResult]:
        """Close the open window (netting it) and open the next, which receives what was queued."""
        closing = self.current
        result, handed_on = closing.close()
        self.current = self._open()
        for obligation in handed_on:
            self.current.record(obligation)
            self._where[obligation.obligation_id] = self.current.window_id
        return closing, result

    def window(self, window_id: str) -> SettlementWindow:
        try:
            return self.windows[window_id]
        except KeyError:
            raise UnknownWindow(f"no window {window_id}", metadata={"window_id": window_id}) from None

    def begin_settlement(self, window_id: str) -> list[SettlementInstruction]:
        return self.window(window_id).begin_settlement()

    def report(self, instruction_id: str, state: InstructionState, reason: str = "") -> bool:
        return self._window_of(instruction_id).report(instruction_id, state, reason)

    def retry(self, instruction_id: str) -> SettlementInstruction:
        return self._window_of(instruction_id).retry(instruction_id)

    def finish(self, window_id: str) -> SettlementWindow:
        """End a window's settlement; its failures are carried into the open window."""
        window = self.window(window_id)
        for obligation in window.finish():
            self.record(obligation, force=True)
        return window

    # ------------------------------------------------------------ persistence

    @classmethod
    def restore(cls, windows: list[SettlementWindow], last_seq: int, caps: NetDebitCaps = NO_CAPS,
                policy: CapPolicy = CapPolicy.REFUSE, *, netting_options: NettingOptions = NettingOptions(),
                window_id: Callable[[int], str] = default_window_id) -> ClearingCenter:
        """A center over stored windows: the live ones (exactly one OPEN, the newest), in opening
        order; `last_seq` is the sequence number of the newest window ever opened. The open window
        takes `caps` and `policy` (its queued obligations wait under them)."""
        center = cls(caps, policy, netting_options=netting_options, window_id=window_id)
        center._seq = last_seq
        center.windows = {}
        center._ids = {}
        center._where = {}
        open_windows = [w for w in windows if w.state is WindowState.OPEN]
        assert len(open_windows) == 1 and open_windows[0] is windows[-1], [w.window_id for w in windows]
        for w in windows:
            assert not w.state.final, w.window_id
            center.windows[w.window_id] = w
            for o in w.obligations:
                center._ids[o.obligation_id] = o
                center._where[o.obligation_id] = w.window_id
        current = open_windows[0]
        current.caps, current.policy, current.netting_options = caps, policy, netting_options
        current._book = None  # rebuilt under the caps of now
        for o in current.queued:
            center._ids[o.obligation_id] = o
            center._where[o.obligation_id] = current.window_id
        center.current = current
        return center

    def evict(self, window_id: str) -> SettlementWindow:
        """Forget a finished window (it is stored); its obligation ids leave the index."""
        window = self.window(window_id)
        assert window.state.final, (window_id, window.state)
        for o in window.obligations:
            if self._where.get(o.obligation_id) == window_id:
                del self._ids[o.obligation_id]
                del self._where[o.obligation_id]
        del self.windows[window_id]
        return window

    # ------------------------------------------------------------ inside

    def _open(self) -> SettlementWindow:
        self._seq += 1
        window = SettlementWindow(self._window_id(self._seq), self.caps, self.policy, self.netting_options)
        assert window.window_id not in self.windows, window.window_id
        self.windows[window.window_id] = window
        return window

    def _window_of(self, instruction_id: str) -> SettlementWindow:
        window_id, _, _ = instruction_id.rpartition("/")
        return self.window(window_id)
