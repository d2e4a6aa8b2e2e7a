"""Mock bank and PSP servers that answer asynchronously and uncertainly (coming with the channels issue)."""
