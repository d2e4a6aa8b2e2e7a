"""The domain core: money, the ledger and its storage. Pure Python: no gRPC, no sockets."""
