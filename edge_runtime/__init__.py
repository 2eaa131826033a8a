"""EdgeLessPart edge service: a Flask app factory around the TF-free runtime core.

Knows HTTP, not models: the model side is ``edgelesspart.runtime``. Nothing happens at import;
call :func:`create_app` (or run ``edgelesspart serve-edge BUNDLE``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(bundle: Any, config: Any = None, **kwargs: Any) -> Any:
    """Build the edge Flask app; see :func:`edge_runtime.app.create_app`."""
    from edge_runtime.app import create_app as _create_app

    return _create_app(bundle, config, **kwargs)
