"""Suite-wide rule: in CI (CI=true) nothing may be skipped; locally a skip names the install command."""

from __future__ import annotations

import pytest

from tests.support import IN_CI


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; a skip is a failure in CI",
                                red=True)
