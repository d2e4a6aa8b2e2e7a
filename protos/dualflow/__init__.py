"""dualflow: a payment core that owns the information flow and keeps it in step with the fund flow."""

__version__ = "0.1.0"
