"""offterm plugins."""
