"""Adapters that run the suite against real third-party loaders."""
