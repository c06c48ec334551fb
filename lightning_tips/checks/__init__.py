"""Checks: observe only. Each file holds pure verdict functions, then one thin Callback."""
