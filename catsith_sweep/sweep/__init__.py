"""The sweep layer: Ray Tune + Optuna over an experiment's search space, one MLflow run per trial."""
