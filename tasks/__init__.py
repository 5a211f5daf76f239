"""Prefect tasks: thin wrappers over ``netadapt_core`` that pass paths and small records."""
