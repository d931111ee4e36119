"""MLflow experiments, made in one place so their artifacts land beside the tracking store.

MLflow puts the artifacts of an experiment it creates for a database store under `./mlruns` of whatever folder the
process happens to run in. For a `sqlite:///…/mlflow.db` store we create the experiment with its artifacts in
`…/mlartifacts/` instead, so a registry folder (the demo's, a test's) holds everything it refers to. Other stores
(a tracking server, a file store) keep MLflow's own choice.
"""

from __future__ import annotations

from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
ARTIFACTS_FOLDER = "mlartifacts"


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///FILE` store, as written (relative or not, `~` unexpanded), else None."""
    return Path(tracking_uri[len(SQLITE_PREFIX):]) if tracking_uri.startswith(SQLITE_PREFIX) else None


def artifact_location(tracking_uri: str) -> str | None:
    """Where experiments of a sqlite store keep their artifacts (a file:// URI), else None (MLflow's default)."""
    db = sqlite_database(tracking_uri)
    if db is None:
        return None
    return (db.expanduser().resolve().parent / ARTIFACTS_FOLDER).as_uri()


def ensure_experiment(client, name: str, tracking_uri: str) -> str:
    """The id of experiment `name` in `client`'s store, created (see `artifact_location`) if missing, also when
    another process creates it at the same moment."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))
    except MlflowException as error:  # created meanwhile by another process (a tracking server is shared)
        if getattr(error, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def use_experiment(tracking_uri: str, name: str) -> str:
    """Point mlflow's fluent API (`mlflow.start_run`, `mlflow.log_*`) at `tracking_uri` and experiment `name`."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(MlflowClient(tracking_uri=tracking_uri), name, tracking_uri)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
