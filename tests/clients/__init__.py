"""Conformance: every artifact is read by the real tool the docs say reads it (a package, so its conftest
does not shadow tests/conftest.py, which the other test modules import as `conftest`)."""
