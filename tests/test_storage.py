"""s3:// sources: validated from a local S3-compatible server (moto) on 127.0.0.1, never modified."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.validate import validate
from narrator.config import load_params
from narrator.errors import SourceError
from narrator.storage import open_source
from tests.intake import make_narrator
from tests.services import free_port


def _etags(client, prefix: str) -> dict[str, str]:
    """{key: ETag} of every object under `prefix` in the test bucket."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket="voices", Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback with a bucket holding one narrator under narrators/alex/."""
    import boto3

    port = free_port()
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
    yield {"endpoint": endpoint, "client": client, "etags": _etags(client, "narrators/")}
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
    assert _etags(s3["client"], "narrators/") == s3["etags"]


def test_empty_s3_prefix_is_a_clear_error(s3, tmp_path):
    params = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}})
    with pytest.raises(SourceError, match="no objects under this prefix"):
        open_source("s3://voices/nobody", params.storage, tmp_path)


def test_unreachable_endpoint_names_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # fail at once instead of after botocore's retries
    params = load_params(None, {"storage": {"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}})
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


# ---------------------------------------------------------------------------------- s3:// outputs and step chains


def _cli(s3: dict, cache: Path, *argv: str) -> int:
    """Run `narrator ARGV` in this process against the moto endpoint, with `cache` as storage.cache_dir."""
    from cli.main import main

    return main([*argv, "--set", f"storage.s3_endpoint_url={s3['endpoint']}", "--set", f"storage.cache_dir={cache}"])


def _recorded_uploads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys narrator.storage uploads from now on (the uploads still happen)."""
    import narrator.storage as storage

    real_client, keys = storage.s3_client, []

    def client(cfg):
        made = real_client(cfg)
        upload = made.upload_file

        def recorded(filename, bucket, key, *args, **kwargs):
            keys.append(key)
            return upload(filename, bucket, key, *args, **kwargs)

        made.upload_file = recorded
        return made

    monkeypatch.setattr(storage, "s3_client", client)
    return keys


@pytest.fixture(scope="module")
def s3_chain(s3, tmp_path_factory):
    """validate -> prepare on s3:// URIs only: s3://voices/runs/alex/{validated,prepared}."""
    cache = tmp_path_factory.mktemp("chain-cache")
    assert _cli(s3, cache, "validate", "s3://voices/narrators/alex", "--out", "s3://voices/runs/alex/validated") == 0
    assert _cli(s3, cache, "prepare", "s3://voices/runs/alex/validated", "--out", "s3://voices/runs/alex/prepared") == 0
    return {"cache": cache}


def test_step_chain_on_s3_writes_outputs_under_the_prefixes(s3, s3_chain):
    keys = set(_etags(s3["client"], "runs/alex/"))
    for name in ("report.json", "report.html", "accepted.list"):
        assert f"runs/alex/validated/{name}" in keys
    for name in ("prepare.json", "prepared.list", "holdout.list"):
        assert f"runs/alex/prepared/{name}" in keys
    assert sum(k.startswith("runs/alex/prepared/wav32k/") for k in keys) == 20
    assert sum(k.startswith("runs/alex/prepared/done/") for k in keys) == 20


def test_step_chain_on_s3_leaves_the_source_objects_unchanged(s3, s3_chain):
    assert _etags(s3["client"], "narrators/") == s3["etags"]


def test_rerun_on_a_fresh_machine_reuses_the_outputs_in_the_bucket(s3, s3_chain, tmp_path, monkeypatch):
    import components.prepare

    def no_recompute(*args, **kwargs):
        raise AssertionError("prepare decoded a clip again instead of reusing its done marker")

    monkeypatch.setattr(components.prepare, "read_audio", no_recompute)
    uploads = _recorded_uploads(monkeypatch)
    before = _etags(s3["client"], "runs/alex/prepared/")
    assert _cli(s3, tmp_path / "fresh-cache", "prepare", "s3://voices/runs/alex/validated",
                "--out", "s3://voices/runs/alex/prepared") == 0
    assert not [k for k in uploads if "/wav32k/" in k or "/wav16k/" in k or "/done/" in k]
    after = _etags(s3["client"], "runs/alex/prepared/")
    assert after.keys() == before.keys()
    assert after["runs/alex/prepared/prepared.list"] == before["runs/alex/prepared/prepared.list"]


def test_failed_step_still_uploads_what_it_wrote(s3, s3_chain, monkeypatch):
    import components.prepare

    real, calls = components.prepare.normalise_loudness, []

    def fail_on_the_fourth_clip(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(components.prepare, "normalise_loudness", fail_on_the_fourth_clip)
    assert _cli(s3, s3_chain["cache"], "prepare", "s3://voices/runs/alex/validated",
                "--out", "s3://voices/runs/alex/prepared-killed") == 1
    keys = _etags(s3["client"], "runs/alex/prepared-killed/")
    assert sum("/done/" in k for k in keys) == 3
    assert sum("/wav32k/" in k for k in keys) == 3


def test_unchanged_outputs_are_not_uploaded_again(s3, tmp_path, monkeypatch):
    from narrator.storage import output_dir

    cfg = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}}).storage
    with output_dir("s3://voices/runs/unchanged", cfg, tmp_path) as folder:
        (folder / "a.txt").write_text("a")
        (folder / "b.txt").write_text("b")
    uploads = _recorded_uploads(monkeypatch)
    with output_dir("s3://voices/runs/unchanged", cfg, tmp_path / "elsewhere") as folder:
        assert (folder / "a.txt").read_text() == "a"  # filled from the prefix first
        (folder / "a.txt").write_text("a")  # rewritten, same content
        (folder / "b.txt").write_text("B")
    assert uploads == ["runs/unchanged/b.txt"]


def test_watermark_embed_reads_and_writes_s3(s3, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NARRATOR_WATERMARK_KEY", "storage-test-key")
    assert _cli(s3, tmp_path / "cache", "watermark", "embed", "s3://voices/narrators/alex/clips/000.wav",
                "s3://voices/marked/000.wav", "--payload", "00c0ffee") == 0
    assert "-> s3://voices/marked/000.wav" in capsys.readouterr().out
    assert _cli(s3, tmp_path / "other-cache", "watermark", "detect", "s3://voices/marked/000.wav") == 0
    assert json.loads(capsys.readouterr().out)["payload"] == "00c0ffee"
    assert _etags(s3["client"], "narrators/") == s3["etags"]


def test_output_overlapping_an_input_prefix_is_refused(s3, tmp_path, capsys):
    assert _cli(s3, tmp_path, "prepare", "s3://voices/runs/alex", "--out", "s3://voices/runs/alex/prepared") == 1
    assert "overlaps the input" in capsys.readouterr().err


def test_missing_output_bucket_names_the_bucket(s3, tmp_path):
    from narrator.storage import StorageError, output_dir

    cfg = load_params(None, {"storage": {"s3_endpoint_url": s3["endpoint"]}}).storage
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        with output_dir("s3://no-such-bucket/runs/x", cfg, tmp_path):
            pass


@pytest.mark.parametrize("uri", ["S3://voices/x", "s3:/voices/x", "gs://voices/x", "s3://Bad_Bucket/x", "s3:///x"])
def test_bad_uri_is_a_clear_error(uri, tmp_path):
    from narrator.storage import StorageError, output_dir

    with pytest.raises(StorageError, match="s3://"):
        with output_dir(uri, load_params(None).storage, tmp_path):
            pass


def test_unreachable_endpoint_for_outputs_names_the_setting(tmp_path, monkeypatch):
    from narrator.storage import output_dir

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    cfg = load_params(None, {"storage": {"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}}).storage
    with pytest.raises(SourceError, match="storage.s3_endpoint_url"):
        with output_dir("s3://voices/runs/x", cfg, tmp_path):
            pass
