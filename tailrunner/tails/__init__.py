"""Tail stores: where each (activity, aggregate) remembers how far it got."""
