"""offterm plugins.readers."""
