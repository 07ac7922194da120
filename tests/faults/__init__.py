"""Fault injection for tests: things that break the network between a runner and its servers."""
