"""The integration tier (marked from its folder by tests/conftest.py)."""
