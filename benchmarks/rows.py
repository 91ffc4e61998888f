"""Generated input rows of about 1 KB: `python -m benchmarks.rows N` streams N of them as JSONL to stdout."""

from __future__ import annotations

import sys

import orjson

_WORDS = ("order", "refund", "account", "delivery", "invoice", "password", "package", "charge", "update",
          "support", "error", "screen", "subscription", "address", "tracking", "login")


def make_row(i: int) -> bytes:
    """Row `i`: an id, a subject and a ~1 KB body, as one JSONL line."""
    words = [_WORDS[(i * 7 + k * 13) % len(_WORDS)] for k in range(140)]
    body = f"Ticket {i}: " + " ".join(words)
    return orjson.dumps({"id": f"r{i}", "subject": f"Question about {_WORDS[i % len(_WORDS)]} {i}",
                         "body": body[:950]}) + b"\n"


def main() -> None:
    """Write N rows to stdout."""
    n = int(sys.argv[1])
    out = sys.stdout.buffer
    for start in range(0, n, 1000):
        out.write(b"".join(make_row(i) for i in range(start, min(n, start + 1000))))
    out.flush()


if __name__ == "__main__":
    main()
