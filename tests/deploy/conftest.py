"""Fixtures of the deploy tests: the session's exports (tests/deploy/exports.py), each made once on first use."""
import pytest

from tests.deploy.exports import ExportCache


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("deploy"))
