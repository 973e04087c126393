"""Lightning tasks (one per task family) and the ``sharezoo`` CLI."""
