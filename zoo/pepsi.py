"""pepsi family (in progress)."""
