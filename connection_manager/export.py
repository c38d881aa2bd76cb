"""Connections as CSV, streamed page by page: memory stays at one page however long the listing."""
from __future__ import annotations

import csv
import io
from typing import Any, Callable, Iterator

COLUMNS = (
    "connectionId", "userId", "status", "createdAt", "lastActiveAt", "disconnectedAt", "disconnectReason",
    "sourceIp", "userAgent",
)
#: A cell starting with one of these is a formula to a spreadsheet; ids and user agents come
#: from clients, so such cells get a leading apostrophe (OWASP's CSV injection advice).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_pages(first: dict[str, Any], next_page: Callable[[str], dict[str, Any]]) -> Iterator[str]:
    """The header, then each page's rows; ``first`` is already read (so its errors are still a 4xx)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    page: dict[str, Any] | None = first
    while page is not None:
        for record in page["connections"]:
            writer.writerow([_cell(value) for value in _row(record)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        token = page.get("nextToken")
        page = next_page(token) if token else None


def _row(record: dict[str, Any]) -> list[Any]:
    metadata = record.get("metadata") or {}
    return [record.get(name) for name in COLUMNS[:7]] + [metadata.get("sourceIp"), metadata.get("userAgent")]


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text
