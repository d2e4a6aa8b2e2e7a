"""What every adapter's `fetch_statement` shares: a statement is spooled, verified, then streamed.

A statement is trusted only when its trailer (or summary) and its checksum check out, and those
come last. So the file is first downloaded to a temporary file (constant memory, whatever its
size), then read once: every line parsed and checked, the parsed lines written to a second
temporary file (`Spool`), the totals and the checksum compared at the end. Only then are lines
handed out, from the spool, in file order. A malformed statement raises
`contract.StatementRejected` before its first line is yielded: nothing can be half-applied.

The spool holds plain tuples in marshal batches (fast, and a format private to this process:
the file is anonymous and deleted on close).
"""

from __future__ import annotations

import marshal
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any

from .contract import Outcome, StatementLine

SPOOL_BATCH = 4_096  # lines per marshal record: large enough to be fast, small enough to stay flat
CHUNK_BYTES = 1 << 16

_STATUS = {"SUCCEEDED": Outcome.SUCCEEDED, "FAILED": Outcome.FAILED}


class Spool:
    """Parsed statement lines on disk: `add` while verifying, `lines` once verified."""

    def __init__(self, business_date: str) -> None:
        self.business_date = business_date
        self.count = 0
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="dualflow-statement-")
        self._batch: list[tuple[Any, ...]] = []

    def add(self, instruction_id: str, channel_reference: str, kind: str, amount: int, currency: str,
            status: str, fee: int) -> None:
        """One verified row; `status` is SUCCEEDED or FAILED."""
        self._batch.append((instruction_id, channel_reference, kind, amount, currency, status, fee))
        self.count += 1
        if len(self._batch) >= SPOOL_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            # Length-prefixed: marshal.load on a file reads it a few bytes at a time (slow).
            data = marshal.dumps(self._batch)
            self._file.write(len(data).to_bytes(8, "little"))
            self._file.write(data)
            self._batch = []

    def lines(self) -> Iterator[StatementLine]:
        self._flush()
        self._file.seek(0)
        day, status_of = self.business_date, _STATUS
        while True:
            head = self._file.read(8)
            if not head:
                return
            batch = marshal.loads(self._file.read(int.from_bytes(head, "little")))
            for iid, ref, kind, amount, currency, status, fee in batch:
                yield StatementLine(day, iid, ref, kind, amount, currency, status_of[status], fee)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def temporary_file() -> IO[bytes]:
    return tempfile.TemporaryFile(prefix="dualflow-statement-download-")


async def download(chunks: AsyncIterator[bytes], into: IO[bytes], *hashers: Any) -> int:
    """Copy a response body to a file chunk by chunk, feeding each hasher; returns the byte count."""
    size = 0
    async for chunk in chunks:
        into.write(chunk)
        for h in hashers:
            h.update(chunk)
        size += len(chunk)
    into.flush()
    into.seek(0)
    return size
