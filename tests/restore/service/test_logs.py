from __future__ import annotations

import json
import logging

from restore.service.logs import JsonFormatter, request_id


def test_log_lines_are_json_with_the_request_id() -> None:
    token = request_id.set("req-42")
    try:
        record = logging.makeLogRecord({"msg": "hello %s", "args": ("world",), "levelname": "INFO", "model": "m"})
        line = JsonFormatter().format(record)
    finally:
        request_id.reset(token)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["msg"] == "hello world" and entry["request_id"] == "req-42" and entry["model"] == "m"
