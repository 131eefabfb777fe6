"""Replay the incident against a real database: the route's concurrent fetch-modify-write saves,
with the app's own console log, so `imgsave audit --pattern` has something to find.

    python scripts/reproduce_incident.py PROJECT [--scenes 20] [--images 2] [--app-log FILE]

Uses IMGSAVE_DATABASE_URL (else the embedded server) and a loopback image API; creates or
replaces PROJECT with an incident-shaped document first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from imgsave._demo.incident import APP_LOG_PATTERN, incident_document, naive_generate
from imgsave._demo.loopback import LoopbackProvider
from imgsave._demo.writes import DemoDatabase
from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.imageapi.kinds import FACTS
from imgsave.core.documents import decode, encode, scenes
from imgsave.core.settings import load_settings


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--app-log", type=Path, default=Path("app-console.log"))
    args = parser.parse_args()
    settings = load_settings(kinds=FACTS)
    async with await DemoDatabase.from_settings(settings, max_size=8) as db:
        await db.put(args.project, encode(decode(json.dumps(incident_document(args.scenes)))))
        with LoopbackProvider(latency=0.05, jitter=0.1) as api, args.app_log.open("a") as log:
            provider = Provider(api.base_url, None, None, settings.provider)
            try:
                logged = await naive_generate(
                    db,
                    provider,
                    args.project,
                    settings.shape,
                    args.images,
                    app_log=log,
                    think=0.01,
                )
            finally:
                await provider.aclose()
        kept = sum(len(s.urls) for s in scenes(decode(await db.read(args.project)), settings.shape))
    print(f"logged as saved: {len(logged)}; in the database: {kept}; lost: {len(logged) - kept}")
    print(f"app log: {args.app_log}  (audit with --pattern '{APP_LOG_PATTERN}')")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
