"""A mock third-party PSP (WeChat Pay API v3 conventions): see server.py. Imports nothing of dualflow."""
