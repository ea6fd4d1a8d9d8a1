"""``onceonly doctor`` against a real server whose ACL password holds URL delimiters."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import pytest

import redis_harness as harness
from onceonly.cli import main

# Every character that ends a part of a URL, a colon, and a literal percent escape.
PASSWORD = "pw@0ne/tw0#thr3e?f0ur:f1ve%41s1x"


def test_doctor_never_prints_a_password_with_url_delimiters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, redis_engine: harness.Engine
) -> None:
    user = "doctor-app"
    rule = f"user {user} on >{PASSWORD} ~onceonly:* resetchannels +@all"
    server = harness.standalone(
        redis_engine, tmp_path, extra=["user default on nopass ~* &* +@all", rule]
    )
    encoded = quote(PASSWORD, safe="")
    host = f"127.0.0.1:{server.port}"
    # The whole password, encoded, decoded once more, and each piece between delimiters.
    pieces = [PASSWORD, encoded, "f1veAs1x", *re.split("[@/#?:]", PASSWORD)[1:]]
    with harness.stopped_at_exit(server):
        # Percent-encoded, in the user part and in the query: redis-py logs in.
        for url in (
            f"redis://{user}:{encoded}@{host}/0",
            f"redis://{host}/0?username={user}&password={encoded}",
        ):
            code = main(["doctor", url])
            out = capsys.readouterr().out
            assert re.search(r"^connection +ok ", out, re.MULTILINE), out
            assert code in (0, 1), out  # persistence may warn; nothing fails
            for piece in pieces:
                assert piece not in out, (piece, out)
        header = out.splitlines()[0]
        assert header == f"onceonly doctor: redis://{host}/0?*** (prefix onceonly)"

        # Written raw, it cannot be read as one URL: an error line, no piece of it.
        code = main(["doctor", f"redis://{user}:{PASSWORD}@{host}/0"])
        captured = capsys.readouterr()
        assert code == 2
        assert "percent-encode" in captured.out
        for piece in pieces:
            assert piece not in captured.out + captured.err, (piece, captured)
        assert captured.out.splitlines()[0] == (
            f"onceonly doctor: redis://{user}:*** (prefix onceonly)"
        )
