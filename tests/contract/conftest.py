from __future__ import annotations

import os


def pytest_collection_modifyitems(config, items):
    """The exhaustive variant runs apart (CNM_EXHAUSTIVE=1): deselected, not skipped."""
    if os.environ.get("CNM_EXHAUSTIVE") == "1":
        return
    kept = [item for item in items if "exhaustive" not in item.keywords]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
