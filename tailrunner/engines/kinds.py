"""The names of the engines, stated once (config, the factory and the CLI read them here)."""

from __future__ import annotations

from typing import Literal, get_args

EngineKind = Literal["lazy", "eager", "cron"]
ENGINE_KINDS: tuple[EngineKind, ...] = get_args(EngineKind)
