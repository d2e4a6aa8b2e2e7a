"""Webhooks: signed event notifications to merchants (signature scheme, delivery worker)."""
