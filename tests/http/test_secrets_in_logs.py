"""No raw Idempotency-Key and no payload reaches the logs, whatever the request does."""

from __future__ import annotations

import logging

import pytest
from wsgi_support import JSON, client

from onceonly.stores import MemoryStore

SECRET_KEY = "key-4f1d-secret"
SECRET_BODY = '{"card": "4111-1111-1111-1111"}'


def test_logs_never_hold_the_raw_key_or_the_body(caplog: pytest.LogCaptureFixture) -> None:
    http, shop, _ = client(MemoryStore())
    headers = {"Idempotency-Key": f'"{SECRET_KEY}"', **JSON}
    with caplog.at_level(logging.DEBUG):
        assert http.post("/payments", data=SECRET_BODY, headers=headers).status_code == 201
        assert http.post("/payments", data=SECRET_BODY, headers=headers).status_code == 201
        assert http.post("/payments", data='{"other": 1}', headers=headers).status_code == 422
        other = {**headers, "Idempotency-Key": f'"{SECRET_KEY}-2"'}
        assert http.post("/status/503", data=SECRET_BODY, headers=other).status_code == 503
        third = {**headers, "Idempotency-Key": f'"{SECRET_KEY}-3"'}
        with pytest.raises(RuntimeError):
            http.post("/boom", data=SECRET_BODY, headers=third)
        assert (
            http.post(
                "/payments", data=SECRET_BODY, headers={"Idempotency-Key": '"bad\\x"', **JSON}
            ).status_code
            == 400
        )
    assert shop.runs("/payments") == 1
    text = "\n".join(record.getMessage() + repr(record.args) for record in caplog.records)
    assert caplog.records  # something was logged (the release after the 5xx and the failure)
    assert SECRET_KEY not in text
    assert "4111" not in text
