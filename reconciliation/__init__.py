"""Reconciliation (核算): our information flow against each channel's record of the fund flow."""
