"""Payment orders: internal assets settle in the ledger, external assets go out through channels."""
