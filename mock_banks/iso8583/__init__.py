"""A mock card bank that speaks ISO 8583 over TCP, the way the `iso8583` adapter expects a real one to.

It imports nothing of dualflow: `wire.py` is its own codec (its own field table, written from the
ISO 8583:1987 field definitions, its own AES-CMAC over raw AES), so a bug in the adapter's codec shows
up as a rejected MAC or an unparseable message here instead of agreeing with itself. `bank.py` keeps
the book and decides each answer from a seeded behaviour profile; `server.py` is the program.
"""
