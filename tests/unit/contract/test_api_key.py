"""Label Studio's API key as a header: one exchange of a personal access token, reused."""

from __future__ import annotations

import pytest
import requests

from worker.contract.api_key import ApiKey
from worker.contract.errors import LabelStudioAuthError

PERSONAL = "eyJhbGciOi.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"


class FakeExchange:
    def __init__(self, status: int = 200) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.status = status

    def __call__(self, url, json, timeout):
        self.calls.append((url, json))
        response = requests.Response()
        response.status_code = self.status
        response._content = b'{"access": "short-lived"}'
        return response


def test_a_legacy_token_is_sent_as_it_is_and_no_key_sends_nothing():
    assert ApiKey("http://ls", "abc123", 5).headers() == {"Authorization": "Token abc123"}
    assert ApiKey("http://ls", "", 5).headers() == {}


def test_a_personal_access_token_is_exchanged_once_for_a_bearer_token():
    exchange = FakeExchange()
    key = ApiKey("http://ls/", PERSONAL, 5, post=exchange)
    assert key.headers() == {"Authorization": "Bearer short-lived"}
    assert key.headers() == {"Authorization": "Bearer short-lived"}
    assert exchange.calls == [("http://ls/api/token/refresh", {"refresh": PERSONAL})]


def test_a_refused_exchange_says_where():
    key = ApiKey("http://ls", PERSONAL, 5, post=FakeExchange(status=401))
    with pytest.raises(LabelStudioAuthError, match="cannot exchange .* at http://ls/api/token"):
        key.headers()
