"""The conformance suite: the pytest plugin, the properties, one test module per property.

The public types a loader adapter needs are importable from ``weightcheck`` itself.
"""
