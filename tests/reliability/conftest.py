"""Fixtures of the reliability tests: the e2e recorder plugin, built once per module."""

from __future__ import annotations

from tests.e2e.conftest import plugin_site

__all__ = ["plugin_site"]
