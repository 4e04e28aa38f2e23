"""offterm plugins.transport."""
