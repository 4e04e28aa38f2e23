"""offterm cli."""
