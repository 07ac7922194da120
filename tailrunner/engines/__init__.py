"""Engines decide when activities run: lazy, eager and cron."""
