"""weightcheck: property-based conformance tests for the weight loaders of LLM inference engines."""
