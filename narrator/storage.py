"""Local paths and `s3://` URIs behind one interface.

Every place that takes a path also takes `s3://bucket/key` (boto3; endpoint from `storage.s3_endpoint_url` or the
`AWS_ENDPOINT_URL` environment variable, so MinIO and other S3-compatible stores work). Remote objects are read
through a local cache: sources are only ever read, never modified.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from narrator.config import StorageConfig
from narrator.errors import SourceError


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    rest = str(uri)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise SourceError(f"{uri}: an s3 URI needs a bucket, e.g. s3://my-bucket/narrators/alice")
    return bucket, key


def s3_client(cfg: StorageConfig):
    """A boto3 S3 client honouring the configured endpoint and region."""
    import boto3

    endpoint = cfg.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint, region_name=cfg.s3_region or os.environ.get("AWS_DEFAULT_REGION"))


@dataclass(frozen=True)
class LocalSource:
    """A source made readable as a local folder. `uri` is what the user named (a folder or an s3:// prefix)."""

    root: Path
    uri: str

    def uri_of(self, path: Path) -> str:
        """The user-facing location of a file under `root` (the s3:// key for remote sources)."""
        rel = path.relative_to(self.root).as_posix()
        if is_s3(self.uri):
            return self.uri.rstrip("/") + "/" + rel
        return str(path)


def open_source(uri: str | os.PathLike, cfg: StorageConfig, cache_dir: Path | None = None) -> LocalSource:
    """Make a source folder readable locally: a folder is used in place; an s3:// prefix is mirrored into a cache.

    Objects already in the cache with the same ETag are not downloaded again.
    """
    if not is_s3(uri):
        root = Path(uri).expanduser().resolve()
        if not root.exists():
            raise SourceError(f"{uri}: no such folder; give a folder of recordings or an s3://bucket/prefix")
        if not root.is_dir():
            raise SourceError(f"{uri}: is a file; give the folder that holds the recordings and transcripts")
        return LocalSource(root=root, uri=str(root))
    return LocalSource(root=download_prefix(str(uri), cfg, cache_dir), uri=str(uri))


def download_prefix(uri: str, cfg: StorageConfig, cache_dir: Path | None = None) -> Path:
    """Mirror every object under an s3:// prefix into a local folder and return that folder."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    cache_root = Path(cache_dir or cfg.cache_dir).expanduser()
    target = cache_root / "s3" / bucket / hashlib.sha1(prefix.encode()).hexdigest()[:12]
    client = s3_client(cfg)
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                local = target / key[len(prefix):]
                etag_file = local.with_name(local.name + ".etag")
                etag = obj.get("ETag", "")
                count += 1
                if local.exists() and etag_file.exists() and etag_file.read_text() == etag:
                    continue
                local.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, key, str(local))
                etag_file.write_text(etag)
    except (BotoCoreError, ClientError) as error:
        raise SourceError(
            f"{uri}: cannot list or read the bucket ({error}); check the endpoint (storage.s3_endpoint_url or "
            "AWS_ENDPOINT_URL) and credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
        ) from None
    if count == 0:
        raise SourceError(f"{uri}: no objects under this prefix; check the bucket and prefix")
    return target


def fetch(uri: str | os.PathLike, cfg: StorageConfig, key: str, cache_dir: Path | None = None) -> Path:
    """A local path for a model file or directory named in params.yaml (`key` names the setting in errors).

    Local paths are used in place; an s3:// URI is downloaded once into the cache (a single object when the URI
    names one, else every object under the prefix).
    """
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise SourceError(f"{key}: {path} does not exist; fix {key} in params.yaml (a local path or s3:// URI)")
        return path
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, object_key = split_s3(str(uri))
    target = Path(cache_dir or cfg.cache_dir).expanduser() / "s3" / bucket / object_key
    client = s3_client(cfg)
    try:
        head = client.head_object(Bucket=bucket, Key=object_key) if object_key and not object_key.endswith("/") else None
    except ClientError:
        head = None
    except BotoCoreError as error:
        raise SourceError(f"{key}: cannot reach {uri} ({error}); check storage.s3_endpoint_url and credentials") from None
    if head is None:
        return download_prefix(str(uri), cfg, cache_dir)
    etag_file = target.with_name(target.name + ".etag")
    if not (target.exists() and etag_file.exists() and etag_file.read_text() == head.get("ETag", "")):
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, object_key, str(target))
        etag_file.write_text(head.get("ETag", ""))
    return target


def upload_file(local: Path, uri: str, cfg: StorageConfig) -> None:
    """Copy one local file to an s3:// URI."""
    bucket, key = split_s3(uri)
    s3_client(cfg).upload_file(str(local), bucket, key)


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
