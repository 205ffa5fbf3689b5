"""Example games and env processes for rlay."""
