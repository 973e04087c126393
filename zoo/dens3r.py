"""dens3r family (in progress)."""
