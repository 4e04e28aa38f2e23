"""offterm sim."""
