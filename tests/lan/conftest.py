"""Real-network tests: ``fednode run`` processes in network namespaces (root + iproute2).

Each test builds its own LAN (``fednode.testing.netns``), runs a federation on it with
mDNS discovery only, and tears everything down. Run them with ``pytest tests/lan``
(about 2-3 minutes on 2 cores); ``-m "not netns"`` leaves them out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fednode.testing.netns import skip_unless_available


@pytest.fixture
def lan_dir(tmp_path: Path) -> Path:
    """A work directory for one LAN; skips the test where namespaces cannot be built."""
    skip_unless_available()
    return tmp_path
