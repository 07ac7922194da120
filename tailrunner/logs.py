"""Logging setup: structlog for tailrunner's own logs, the standard library's routed through it.

Only the CLI calls :func:`configure_logging`; library code just does
``log = structlog.get_logger(__name__)`` and logs short events with fields.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO, get_args

import structlog
from structlog.typing import Processor

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "LogFormat", "configure_logging"]

LogFormat = Literal["auto", "console", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
LOG_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

#: The handler this module put on the root logger, replaced when configured again.
_installed: list[logging.Handler] = []


class _NamedWriteLogger(structlog.WriteLogger):
    """A :class:`structlog.WriteLogger` that knows the name it was asked for.

    ``structlog.get_logger(__name__)`` passes the module's name to the
    logger factory; keeping it lets ``add_logger_name`` put it in each event.
    """

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _LoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._stream, str(args[0]) if args else "")


def configure_logging(
    format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's logging for the process.

    Each event is one line: coloured key=value text (``console``) or a JSON
    object (``json``), with an ISO 8601 UTC ``timestamp``, the ``level``, the
    ``logger`` name and the event's fields. Logs of other libraries (grpc …)
    that use the standard :mod:`logging` are rendered the same way, from
    WARNING up, so their debug chatter stays out even at ``debug``.

    Calling it again replaces the previous configuration.

    :param format: ``console``, ``json``, or ``auto``: console when ``stream``
        is a terminal, JSON lines otherwise.
    :param level: the lowest level logged: ``debug``, ``info``, ``warning``
        or ``error``.
    :param stream: where the lines go; standard error when ``None``, so that
        standard output stays the commands' own output.
    :raises ValueError: an unknown format or level.
    """
    if format not in LOG_FORMATS:
        raise ValueError(f"log format {format!r}: expected one of {', '.join(LOG_FORMATS)}")
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LOG_LEVELS)}")
    out = sys.stderr if stream is None else stream
    terminal = _isatty(out)
    as_json = format == "json" or (format == "auto" and not terminal)
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=terminal,
            # Plain tracebacks off a terminal; rich's show local values, which
            # may hold secrets, and only help someone at a terminal.
            exception_formatter=(
                structlog.dev.RichTracebackFormatter(show_locals=False)
                if terminal and _has_rich()
                else structlog.dev.plain_traceback
            ),
        )
    # Shared by structlog's events and the standard library's records.
    common: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON needs tracebacks as data (without local values: they may hold
    # secrets); the console renderer formats them itself.
    tracebacks: list[Processor] = (
        [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
        if as_json
        else []
    )
    threshold = LOG_LEVELS[level]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *common,
            structlog.processors.StackInfoRenderer(),
            *tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=_LoggerFactory(out),
        # Not cached: a logger bound on first use would keep this configuration
        # for good, and tests (and structlog.testing.capture_logs) reconfigure.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=common,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
    _installed[:] = [handler]
    root.addHandler(handler)
    root.setLevel(max(logging.WARNING, threshold))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True
