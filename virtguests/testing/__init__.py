"""Test tooling shipped with virtguests: the fake virsh users run in their CI.

Nothing in the product imports this package.
"""
