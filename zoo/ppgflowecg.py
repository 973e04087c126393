"""ppgflowecg family (in progress)."""
