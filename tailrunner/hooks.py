"""The pluggy markers of tailrunner's plugins: a module of its own so that plugins
(the built-in one included) can mark hooks without importing the loader.
"""

from __future__ import annotations

import pluggy

#: The entry-point group plugins register under, and pluggy's project name.
ENTRY_POINT_GROUP = "tailrunner"

hookspec = pluggy.HookspecMarker(ENTRY_POINT_GROUP)
#: Marks a plugin's hook implementations: ``@hookimpl def tailrunner_activities(): …``.
hookimpl = pluggy.HookimplMarker(ENTRY_POINT_GROUP)
