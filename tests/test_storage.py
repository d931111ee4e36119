"""s3:// sources: validated from a local S3-compatible server (moto) on 127.0.0.1, never modified."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from components.validate import validate
from narrator.config import load_params
from narrator.errors import SourceError
from narrator.storage import open_source
from tests.intake import make_narrator


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback with a bucket holding one narrator under narrators/alex/."""
    import boto3

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for _ in range(100):
        try:
            client.list_buckets()
            break
        except Exception:
            time.sleep(0.1)
    client.create_bucket(Bucket="voices")
    folder = make_narrator(tmp_path_factory.mktemp("s3src") / "narrator")
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "voices", f"narrators/alex/{path.relative_to(folder).as_posix()}")
    etags = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket="voices")["Contents"]}
    yield {"endpoint": endpoint, "client": client, "etags": etags}
    server.terminate()
    server.wait(timeout=10)
    mp.undo()


def test_s3_prefix_is_validated_like_a_folder(s3, tmp_path):
    params = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}})
    report = validate("s3://voices/narrators/alex", tmp_path / "out", params)
    assert report.verdict == "accepted"
    assert all(c.path.startswith("s3://voices/narrators/alex/clips/") for c in report.clips)
    assert report.totals["accepted"] == 20


def test_s3_source_objects_are_not_modified(s3, tmp_path):
    params = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}})
    validate("s3://voices/narrators/alex", tmp_path / "out", params)
    after = {o["Key"]: o["ETag"] for o in s3["client"].list_objects_v2(Bucket="voices")["Contents"]}
    assert after == s3["etags"]


def test_empty_s3_prefix_is_a_clear_error(s3, tmp_path):
    params = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}})
    with pytest.raises(SourceError, match="no objects under this prefix"):
        open_source("s3://voices/nobody", params.storage, tmp_path)


def test_unreachable_endpoint_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    params = load_params(None, {"storage": {"s3_endpoint_url": f"http://127.0.0.1:{_free_port()}"}})
    with pytest.raises(SourceError, match="storage.s3_endpoint_url"):
        open_source("s3://voices/alex", params.storage, tmp_path)


def test_model_file_named_by_s3_uri_is_fetched_once(s3, tmp_path):
    from narrator.storage import fetch

    s3["client"].put_object(Bucket="voices", Key="models/base.pth", Body=b"weights")
    params = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}})
    path = fetch("s3://voices/models/base.pth", params.storage, "pretrained.sovits", tmp_path)
    assert path.read_bytes() == b"weights"
    mtime = path.stat().st_mtime_ns
    assert fetch("s3://voices/models/base.pth", params.storage, "pretrained.sovits", tmp_path).stat().st_mtime_ns == mtime


def test_model_directory_named_by_s3_prefix_is_fetched_whole(s3, tmp_path):
    from narrator.storage import fetch

    for name in ("config.json", "model.safetensors"):
        s3["client"].put_object(Bucket="voices", Key=f"models/hubert/{name}", Body=b"{}")
    params = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}})
    folder = fetch("s3://voices/models/hubert", params.storage, "pretrained.hubert_dir", tmp_path)
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".etag")) == ["config.json", "model.safetensors"]


def test_missing_local_model_path_names_the_key(tmp_path):
    from narrator.storage import fetch

    with pytest.raises(SourceError, match="pretrained.gpt"):
        fetch(tmp_path / "nope.ckpt", load_params(None).storage, "pretrained.gpt")
