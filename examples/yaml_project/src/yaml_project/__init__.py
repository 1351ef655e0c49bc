"""Example dg project: product reviews run through a Batch API from one ``defs.yaml``."""
