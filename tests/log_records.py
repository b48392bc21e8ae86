"""Log records kept across a block, for module-scoped fixtures (pytest's ``caplog`` lives for one test)."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator


class _Records(logging.Handler):
    def __init__(self, records: list[tuple[int, str]]) -> None:
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


@contextlib.contextmanager
def recorded_logs(name: str | None = None) -> Iterator[list[tuple[int, str]]]:
    """``(level, message)`` of every record of INFO or above that reaches the logger ``name`` (the root logger by
    default) inside the block; the logger's level is INFO there and restored after."""
    records: list[tuple[int, str]] = []
    handler, logger = _Records(records), logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
