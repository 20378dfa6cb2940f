"""memvee as a service: the HTTP API and the MCP server behind ``memvee serve`` and
``memvee mcp``. Importing this package needs only typer; the ``server`` extra's
libraries load when a command runs."""

from memvee._server.commands import register_commands

__all__ = ["register_commands"]
