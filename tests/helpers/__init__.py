"""Helpers shared by the tests (tiny configs, paths)."""
