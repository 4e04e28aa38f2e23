"""offterm plugins.policies."""
