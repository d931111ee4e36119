"""The loopback services the `services` tests run against come up and answer (tests/services.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.services


def test_postgres_accepts_connections_and_queries(postgres_service):
    import psycopg

    with psycopg.connect(postgres_service.url) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1 + 1")
        assert cursor.fetchone() == (2,)


def test_redis_answers_ping(redis_service):
    import redis

    assert redis.Redis.from_url(redis_service.url).ping() is True


def test_s3_endpoint_stores_and_returns_an_object(s3_service):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_service.url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.put_object(Bucket="narrator", Key="probe.txt", Body=b"hello")
    assert client.get_object(Bucket="narrator", Key="probe.txt")["Body"].read() == b"hello"


def test_mlflow_server_registers_a_model_backed_by_postgres(mlflow_service):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_service.url, registry_uri=mlflow_service.url)
    client.create_registered_model("narrator-services-probe")
    assert client.get_registered_model("narrator-services-probe").name == "narrator-services-probe"
