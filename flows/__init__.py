"""Prefect flows: the pipeline's stages composed from ``tasks``; the CLI and deployments run these."""
