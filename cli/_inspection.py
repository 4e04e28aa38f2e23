"""How the ``offterm`` commands open a store: never creating one, and without the token backend.

An operator's command must not change what it inspects.  Pointed at a mistyped ``data_dir`` it says
there is no store there (``storage_not_found``) instead of creating a fresh store and key and
reporting "nothing waiting".  Commands that never talk to the processor on a payment's behalf
(status, payments, export, doctor's store checks) also need no connection-token backend: they run
with a token provider that never has a token, so a configuration without ``[tokens.http] url``, or no
configuration file at all, is enough to look at a device's store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path

from offterm.core import Terminal, hookimpl
from offterm.core.config import Config
from offterm.core.contracts import ConnectionToken, ConnectionTokenProvider, TokenRequest
from offterm.core.manager import PluginManager, create_plugin_manager
from offterm.core.registrations import TokenProviderRegistration

#: The plugin object the CLI registers, and its token provider's component name.
CLI_PLUGIN = "offterm-cli"
NO_TOKENS = "offterm-cli-no-tokens"


class _NoTokens(ConnectionTokenProvider):
    """Never has a token: an inspection command never authenticates with the processor."""

    async def fetch(self, request: TokenRequest) -> ConnectionToken | None:
        return None


class CliPlugin:
    @hookimpl
    def offterm_connection_token_providers(self) -> Iterator[TokenProviderRegistration]:
        yield TokenProviderRegistration(
            name=NO_TOKENS,
            factory=lambda ctx: _NoTokens(),
            description="offterm's own commands: no connection token (they only inspect the store)",
        )


def loaded_from(cfg: Config) -> Path | None:
    """The configuration file really read; None when the defaults were used (no file)."""
    return cfg.source if cfg.source is not None and cfg.source.is_file() else None


def without_tokens(cfg: Config) -> Config:
    """``cfg`` with the token providers replaced by one that never has a token."""
    sections = {**cfg.sections, "tokens": {**cfg.sections["tokens"], "providers": [NO_TOKENS]}}
    return dataclasses.replace(cfg, sections=sections)


def plugin_manager(cfg: Config, listeners: Mapping[str, object] | None = None) -> PluginManager:
    """The configured plugins, the CLI's own, and ``listeners`` (objects with hook implementations)."""
    p = cfg.sections["plugins"]
    return create_plugin_manager(
        disabled=p["disable"],
        autoload=p["autoload"],
        strict=p["strict"],
        env=cfg.env,
        plugins={CLI_PLUGIN: CliPlugin(), **(listeners or {})},
    )


def inspection_terminal(
    cfg: Config,
    *,
    tokens: bool = False,
    listeners: Mapping[str, object] | None = None,
    pm: PluginManager | None = None,
) -> Terminal:
    """A Terminal that opens only an existing store, runs nothing in the background, and (unless
    ``tokens``) never asks the token backend.  ``pm`` must come from ``plugin_manager``."""
    return Terminal(
        cfg if tokens else without_tokens(cfg),
        pm or plugin_manager(cfg, listeners),
        background=False,
        create_store=False,
    )
