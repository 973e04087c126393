"""Metrics not in torchmetrics, each tested against an independent computation."""
