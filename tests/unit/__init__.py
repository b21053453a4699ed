"""The unit tier (marked from its folder by tests/conftest.py)."""
