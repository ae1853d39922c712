"""A click group whose commands are imported when one is asked for, so ``astra --version`` imports none of them."""

from __future__ import annotations

import importlib

import click


class LazyGroup(click.Group):
    """A ``click.Group`` that also knows commands by where they are defined (``"module:name"``) and imports each
    when it is run or listed: `astra tasks show` never imports what `astra results` needs (astropy, numpy).
    """

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.lazy_commands:
            module, attribute = self.lazy_commands[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)
