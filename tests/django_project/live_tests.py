"""Run by ``python -m django test`` from tests/testing/test_live.py (pytest does not collect it).

Under Django's test runner the database ``NAME`` changes to the test
database's at run time; the server process must follow it.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from django.contrib.sessions.models import Session
from django.utils import timezone

from tidings.testing import ChannelsLiveServerTestCase


class RunnerLiveServerTests(ChannelsLiveServerTestCase):
    def test_server_uses_the_test_database(self) -> None:
        url = f"{self.live_server_url}/sessions/runner-row/"
        # The main database was never migrated: only the test database has the table.
        assert httpx.get(url, timeout=10).text == "no"
        Session.objects.create(
            session_key="runner-row",
            session_data="",
            expire_date=timezone.now() + timedelta(days=1),
        )
        assert httpx.get(url, timeout=10).text == "yes"
