"""Path templates of an app's documented routes (from its OpenAPI document), for requests that
no route answered: label a 413 from the body limit by the route it was for
(``service.core.metrics``), and list every method a path allows in a 405's ``Allow``
(``service.core.errors``)."""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)


class RouteTemplates:
    """The path templates and methods of ``app``'s documented routes, read on first use."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._compiled: list[tuple[re.Pattern[str], frozenset[str], str]] | None = None

    def _patterns(self) -> list[tuple[re.Pattern[str], frozenset[str], str]]:
        if self._compiled is None:
            compiled = []
            try:
                paths = self._app.openapi().get("paths", {})
            except Exception:  # a broken schema must not break requests
                log.exception("cannot read the OpenAPI paths")
                paths = {}
            for template, operations in paths.items():
                regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
                compiled.append((re.compile(f"^{regex}$"),
                                 frozenset(m.upper() for m in operations), template))
            self._compiled = compiled
        return self._compiled

    def methods(self, path: str) -> list[str]:
        """Every method some documented route answers at ``path``."""
        return sorted({m for pattern, methods, _ in self._patterns() if pattern.match(path)
                       for m in methods})

    def match(self, method: str, path: str) -> str | None:
        fallback = None
        for pattern, methods, template in self._patterns():
            if pattern.match(path):
                if method in methods:
                    return template
                fallback = fallback or template
        return fallback
