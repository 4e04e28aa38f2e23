"""offterm plugins.storage."""
