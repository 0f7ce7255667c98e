"""``python -m restore.service``: serve with one uvicorn worker (the in-process batcher owns the device)."""

from __future__ import annotations

import argparse
import os
import sys

import uvicorn
from pydantic import ValidationError

from restore.core.manifest import ManifestError
from restore.service import logs, server
from restore.service.errors import StartupError
from restore.service.settings import Settings
from restore.service.app import create_app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"restore: cannot start: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    logs.configure(settings.log_level)

    shown = "localhost" if args.host in ("0.0.0.0", "::", "") else args.host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{args.port}/"
    try:
        app = create_app(settings, ready_message=f"ready: open {url} (the page) or {url}docs (the API)")
    except (StartupError, ManifestError) as exc:
        print(f"restore: cannot start: {exc}", file=sys.stderr)
        return 1
    uvicorn.Server(server.config(app, settings, host=args.host, port=args.port)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
