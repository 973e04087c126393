"""fusionreid family (in progress)."""
