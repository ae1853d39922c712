"""A task module as light as astra lets it be, for tests/test_startup.py: what a done task's check imports."""

from __future__ import annotations

import astra


class Light(astra.BaseTask):
    """Returns a plain value: neither its module nor its record needs numpy."""

    def run(self) -> dict:
        return {"light": True}
