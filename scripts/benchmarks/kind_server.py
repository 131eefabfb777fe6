"""The loopback provider serving one kind of image API, in a process of its own, for the
adapters benchmark:

    python kind_server.py KIND LATENCY_SECONDS JOB_POLLS [JOB_SECONDS]
        # prints its base URL; stops when stdin closes

Answers are base64 (openai, azure, gemini) or URLs it serves itself (the job APIs), images of
2 kB: what is measured is each adapter's requests, polls and parsing, not image handling.
"""

from __future__ import annotations

import sys

from imgsave._demo.loopback import LoopbackProvider

kind, latency, polls = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
with LoopbackProvider(
    kind=kind, latency=latency, answer="b64", image_bytes=2048, job_polls=polls,
    job_seconds=seconds,
) as provider:  # fmt: skip
    print(provider.base_url, flush=True)
    sys.stdin.read()
