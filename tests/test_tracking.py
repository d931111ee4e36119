"""narrator.tracking: experiments of a sqlite MLflow store keep their artifacts beside the database, wherever the
process runs."""

from __future__ import annotations

from pathlib import Path

from narrator.tracking import artifact_location, ensure_experiment, use_experiment


def test_sqlite_store_artifacts_go_beside_the_database(tmp_path):
    uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    assert artifact_location(uri) == (tmp_path / "registry" / "mlartifacts").as_uri()


def test_other_stores_keep_mlflows_default_location():
    assert artifact_location("http://mlflow.internal:5000") is None
    assert artifact_location("file:///srv/mlruns") is None


def test_logged_artifacts_land_under_the_registry_folder_not_the_working_folder(tmp_path, monkeypatch):
    import mlflow

    registry, elsewhere = tmp_path / "registry", tmp_path / "elsewhere"
    registry.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    note = tmp_path / "note.txt"
    note.write_text("hello")
    uri = f"sqlite:///{registry / 'mlflow.db'}"
    use_experiment(uri, "narrator-test")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(note))
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "note.txt"
    assert stored.read_text() == "hello"
    assert stored.is_relative_to(registry / "mlartifacts")
    assert not (elsewhere / "mlruns").exists() and not (elsewhere / "mlartifacts").exists()


def test_an_existing_experiment_is_reused(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    first = ensure_experiment(client, "narrator-test", uri)
    assert ensure_experiment(client, "narrator-test", uri) == first
