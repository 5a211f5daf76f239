"""netadapt_core: the NetAdapt library (config, data, models, surgery, importance, platforms, LUT,
schedule, training, the adaptation loop). It imports neither Prefect nor MLflow."""

__version__ = "0.1.0"
