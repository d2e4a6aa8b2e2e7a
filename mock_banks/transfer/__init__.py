"""A mock account-to-account transfer / payout bank that speaks the `transfer` rail's protocol.

It imports nothing of dualflow: `auth.py` signs and verifies from the protocol text (see
`dualflow.adapters.transfer` for the protocol), `bank.py` keeps the book (accounts, transfers,
returns) and decides each answer from a seeded behaviour profile, `server.py` is the program
(`dualflow mock-bank transfer ...`) with the rail's HTTP API, retried signed callbacks and the
uniform admin endpoint of mock_banks/launcher.py.
"""
