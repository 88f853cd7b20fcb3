"""Shared test helpers (fixtures stay in tests/conftest.py)."""
