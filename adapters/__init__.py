"""The financial gateway: the channel adapter contract and one module per channel (coming with the channels issue)."""
