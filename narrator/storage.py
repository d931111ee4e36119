"""Local paths and `s3://` URIs behind one interface.

Every place that takes a path also takes `s3://bucket/key` (boto3; endpoint from `storage.s3_endpoint_url` or the
`AWS_ENDPOINT_URL` environment variable, so MinIO and other S3-compatible stores work). Steps themselves only ever
see local paths; this module maps URIs onto them:

- `local_dir(uri, cfg)`: an input folder. A local folder is used in place; an s3:// prefix is mirrored into the
  cache (`storage.cache_dir`) and objects already there with the same ETag are not downloaded again.
- `output_dir(uri, cfg)`: a context manager yielding the folder a step writes into. For s3:// it is a staging
  folder in the cache, first filled with what the prefix already holds (so a killed step resumes from its
  checkpoints and done markers) and uploaded back on exit - also when the step fails, so partial progress is kept.
  Unchanged files (same size and MD5/ETag) are not uploaded again; nothing is ever deleted from the bucket.
- `output_file(uri, cfg)`: the same for one file, uploaded when the step succeeds.
- `fetch(uri, cfg, key)`: one input file (or a model directory) named by a setting or an option.

Local output folders: `folder_lock(folder, what)` lets one run at a time write into a folder (and checks that it
can be written), `temporary_name(path)` is where a file is written before it is renamed into place, and
`output_error(error, path)` turns a full disk, a read-only file system or a missing permission into an
`OutputError` that names the path and what to do.

The mirror of a prefix and the staging folder of the same prefix are one folder, so a step reading the output of
the previous one on the same machine (or in the same container layout) finds it where that step wrote it, local
paths recorded in its files included. Sources are only ever read, never modified.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from narrator.config import StorageConfig
from narrator.errors import OutputBusy, OutputError, SourceError
from narrator.log import get_logger

log = get_logger("storage")

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_OTHER_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # two letters or more: C:/ stays a path
_INDEX_SUFFIX = ".index.json"


class StorageError(SourceError):
    """An s3:// location cannot be named, read or written: a bad URI, a missing bucket, an unreachable endpoint or
    missing credentials. The message names the setting to fix."""


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b"). Raises StorageError for a URI without a valid bucket name."""
    rest = str(uri)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri}: an s3 URI needs a bucket, e.g. s3://my-bucket/narrators/alice")
    if not _BUCKET_NAME.match(bucket) or ".." in bucket:
        raise StorageError(f"{uri}: '{bucket}' is not a valid bucket name (3-63 characters: lower-case letters, "
                           "digits, dots and hyphens), e.g. s3://my-bucket/narrators/alice")
    return bucket, key


def check_location(uri: str | os.PathLike) -> None:
    """Refuse what looks like a URI but is not `s3://bucket/...` (`S3://`, `s3:/b`, `gs://`): it would otherwise
    be taken for a local folder name."""
    text = str(uri)
    if is_s3(text):
        split_s3(text)
    elif _OTHER_SCHEME.match(text):
        raise StorageError(f"{text}: not a local path and not an s3:// URI; only s3://bucket/prefix URIs are "
                           "supported (lower-case scheme, two slashes)")


def s3_client(cfg: StorageConfig):
    """A boto3 S3 client honouring the configured endpoint and region."""
    import boto3

    return boto3.client("s3", endpoint_url=_endpoint(cfg),
                        region_name=cfg.s3_region or os.environ.get("AWS_DEFAULT_REGION"))


def _endpoint(cfg: StorageConfig) -> str | None:
    return cfg.s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _explain(error: Exception, uri: str, cfg: StorageConfig, doing: str) -> StorageError:
    """Turn a botocore error into a StorageError that says which setting to fix."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    endpoint = _endpoint(cfg) or "the AWS default endpoint"
    if isinstance(error, NoCredentialsError):
        return StorageError(f"{uri}: no S3 credentials to {doing}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE)")
    if isinstance(error, EndpointConnectionError):
        return StorageError(f"{uri}: cannot reach the S3 endpoint {endpoint} to {doing} ({error}); check "
                            "storage.s3_endpoint_url (or AWS_ENDPOINT_URL) and that the server is up")
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            bucket = split_s3(uri)[0]
            return StorageError(f"{uri}: bucket '{bucket}' does not exist at {endpoint}; create it, fix the bucket "
                                "name, or point storage.s3_endpoint_url at the store that has it")
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
            return StorageError(f"{uri}: access denied to {doing} ({code}); check AWS_ACCESS_KEY_ID/"
                                "AWS_SECRET_ACCESS_KEY and the bucket policy")
    return StorageError(f"{uri}: cannot {doing} ({error}); check the endpoint (storage.s3_endpoint_url or "
                        "AWS_ENDPOINT_URL) and credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")


def _s3_errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError


# ------------------------------------------------------------------------------------------------ inputs


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


def local_dir(uri: str | os.PathLike, cfg: StorageConfig, cache_dir: Path | None = None) -> Path:
    """An input folder on local disk: a local path is returned as given (the step reports a missing folder in its
    own words); an s3:// prefix is mirrored into the cache (see `download_prefix`) and its mirror returned."""
    check_location(uri)
    if not is_s3(uri):
        return Path(uri).expanduser()
    return download_prefix(str(uri), cfg, cache_dir)


def download_prefix(uri: str, cfg: StorageConfig, cache_dir: Path | None = None) -> Path:
    """Mirror every object under an s3:// prefix into a local folder and return that folder.

    Objects whose ETag has not changed since the last mirror are not downloaded again; files mirrored earlier whose
    object has since been deleted are removed from the mirror. Raises StorageError when the prefix holds nothing.
    """
    folder, count = _mirror(str(uri), cfg, cache_dir)
    if count == 0:
        raise StorageError(f"{uri}: no objects under this prefix; check the bucket and prefix (the --out of an "
                           "earlier step: run that step first)")
    return folder


def fetch(uri: str | os.PathLike, cfg: StorageConfig, key: str, cache_dir: Path | None = None) -> Path:
    """A local path for a model file or directory named in params.yaml (`key` names the setting in errors).

    Local paths are used in place; an s3:// URI is downloaded once into the cache (a single object when the URI
    names one, else every object under the prefix).
    """
    check_location(uri)
    if not is_s3(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise SourceError(f"{key}: {path} does not exist; fix {key} in params.yaml (a local path or s3:// URI)")
        return path
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, object_key = split_s3(str(uri))
    target = _cache_root(cfg, cache_dir) / "s3" / bucket / object_key
    client = s3_client(cfg)
    try:
        single = object_key and not object_key.endswith("/")
        head = client.head_object(Bucket=bucket, Key=object_key) if single else None
    except ClientError:
        head = None
    except BotoCoreError as error:
        raise StorageError(f"{key}: cannot reach {uri} ({error}); check storage.s3_endpoint_url and "
                           "credentials") from None
    if head is None:
        return download_prefix(str(uri), cfg, cache_dir)
    etag_file = target.with_name(target.name + ".etag")
    if not (target.exists() and etag_file.exists() and etag_file.read_text() == head.get("ETag", "")):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(bucket, object_key, str(target))
        except (BotoCoreError, ClientError) as error:
            raise _explain(error, str(uri), cfg, "download the file") from None
        etag_file.write_text(head.get("ETag", ""))
    return target


# ------------------------------------------------------------------------------------------------ outputs


@contextmanager
def output_dir(uri: str | os.PathLike, cfg: StorageConfig, cache_dir: Path | None = None,
               upload: bool = True) -> Iterator[Path]:
    """The local folder a step writes its outputs into.

    A local path is yielded as given (the step creates it). For an s3:// prefix: a staging folder under
    `storage.cache_dir`, first filled with what already exists under the prefix (so a re-run resumes from
    checkpoints and done markers), then on exit - success or failure - every new or changed file is uploaded back
    to the prefix. `upload=False` stages without uploading (the non-zero ranks of a distributed run, which write
    nothing). A failed upload after a failed step is logged and the step's own error is raised.
    """
    check_location(uri)
    if not is_s3(uri):
        yield Path(uri).expanduser()
        return
    uri = str(uri)
    folder, _ = _mirror(uri, cfg, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        if upload:
            try:
                sent = _upload_changes(uri, folder, cfg)
                log.info("kept the partial outputs of the failed step: uploaded %d files to %s", sent, uri)
            except SourceError as error:
                log.warning("could not upload the partial outputs to %s: %s", uri, error)
        raise
    if upload:
        sent = _upload_changes(uri, folder, cfg)
        log.info("uploaded %d new or changed files to %s", sent, uri)


@contextmanager
def output_file(uri: str | os.PathLike, cfg: StorageConfig, cache_dir: Path | None = None) -> Iterator[Path]:
    """The local path a step writes one output file to: the path itself when local; for an s3:// URI a staging
    path in the cache, uploaded when the block ends without an error (a half-written file is not uploaded)."""
    check_location(uri)
    if not is_s3(uri):
        yield Path(uri).expanduser()
        return
    bucket, key = split_s3(str(uri))
    if not key or key.endswith("/"):
        raise StorageError(f"{uri}: name a file, e.g. s3://{bucket}/marked/speech.wav")
    staged = _cache_root(cfg, cache_dir) / "s3-out" / bucket / key
    staged.parent.mkdir(parents=True, exist_ok=True)
    yield staged
    if staged.exists():
        upload_file(staged, str(uri), cfg)


def upload_file(local: Path, uri: str, cfg: StorageConfig) -> None:
    """Copy one local file to an s3:// URI."""
    bucket, key = split_s3(uri)
    try:
        s3_client(cfg).upload_file(str(local), bucket, key)
    except _s3_errors() as error:
        raise _explain(error, uri, cfg, "upload the file") from None


def ensure_apart(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an s3:// output prefix that is, contains or lies inside one of the s3:// input prefixes: writing there
    could overwrite the inputs, and inputs are never modified. Local paths are not checked."""
    if not is_s3(output):
        return
    out_bucket, out_key = split_s3(str(output))
    for source in inputs:
        if source is None or not is_s3(source):
            continue
        bucket, key = split_s3(str(source))
        a, b = out_key.strip("/") + "/", key.strip("/") + "/"
        if bucket == out_bucket and (a.startswith(b) or b.startswith(a) or a == "/" or b == "/"):
            raise StorageError(f"--out {output} overlaps the input {source}; write the outputs under a prefix of "
                               "their own (inputs are never modified)")


# ------------------------------------------------------------------------------------------------ mirroring


def _cache_root(cfg: StorageConfig, cache_dir: Path | None) -> Path:
    return Path(cache_dir or cfg.cache_dir).expanduser().resolve()


def _prefix_of(uri: str) -> tuple[str, str]:
    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def _folder_of(bucket: str, prefix: str, cache_root: Path) -> Path:
    """The one local folder of a prefix: its input mirror and its output staging folder alike."""
    return cache_root / "s3" / bucket / hashlib.sha1(prefix.encode()).hexdigest()[:12]


def _index_path(folder: Path) -> Path:
    """What was last synchronised per file ({rel: {etag, size, mtime_ns, md5}}), kept beside the folder so the
    folder holds exactly the prefix's files."""
    return folder.with_name(folder.name + _INDEX_SUFFIX)


def _read_index(folder: Path) -> dict[str, dict]:
    try:
        return json.loads(_index_path(folder).read_text())
    except (OSError, ValueError):
        return {}


def _write_index(folder: Path, index: dict[str, dict]) -> None:
    path = _index_path(folder)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(index, sort_keys=True))
    os.replace(tmp, path)


def _list_prefix(client, bucket: str, prefix: str) -> dict[str, dict]:
    """{path relative to the prefix: {"etag", "size"}} of every object under the prefix."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                objects[obj["Key"][len(prefix):]] = {"etag": obj.get("ETag", ""), "size": int(obj.get("Size", 0))}
    return objects


def _stat(path: Path) -> dict:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _plain_md5(etag: str) -> str | None:
    """The MD5 an ETag is, for single-part uploads; None for multipart ETags (`...-N`)."""
    value = etag.strip('"')
    return value if re.fullmatch(r"[0-9a-f]{32}", value) else None


def _md5_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _mirror(uri: str, cfg: StorageConfig, cache_dir: Path | None) -> tuple[Path, int]:
    """Bring the prefix's local folder up to date with the bucket; returns (folder, number of objects).

    An object is downloaded when the folder lacks it or its ETag changed since the last sync; a file changed
    locally since (a step's newer, not yet uploaded output) is kept while the object is unchanged.
    """
    bucket, prefix = _prefix_of(uri)
    folder = _folder_of(bucket, prefix, _cache_root(cfg, cache_dir))
    client = s3_client(cfg)
    try:
        remote = _list_prefix(client, bucket, prefix)
    except _s3_errors() as error:
        raise _explain(error, uri, cfg, "list or read the bucket") from None
    index = _read_index(folder)
    for rel in [r for r in index if r not in remote]:  # deleted from the bucket since the last sync
        local = folder / rel
        if local.exists() and _stat(local) == {k: index[rel].get(k) for k in ("size", "mtime_ns")}:
            local.unlink()  # a file changed here since is a step's newer output: kept
        del index[rel]
    try:
        for rel, obj in remote.items():
            local = folder / rel
            known = index.get(rel)
            if known and known.get("etag") == obj["etag"] and local.exists():
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, prefix + rel, str(local))
            index[rel] = {"etag": obj["etag"], **_stat(local), "md5": _plain_md5(obj["etag"])}
    except _s3_errors() as error:
        raise _explain(error, uri, cfg, "download the objects") from None
    finally:
        if remote or _index_path(folder).exists():
            folder.mkdir(parents=True, exist_ok=True)
            _write_index(folder, index)
    return folder, len(remote)


def _upload_changes(uri: str, folder: Path, cfg: StorageConfig) -> int:
    """Upload every file of `folder` that the prefix lacks or holds in another version; returns how many.

    A file is unchanged when the object's ETag is its MD5 (single-part uploads), or when neither the object nor the
    file changed since the last sync (size and mtime, or the same MD5 as recorded then).
    """
    bucket, prefix = _prefix_of(uri)
    client = s3_client(cfg)
    try:
        remote = _list_prefix(client, bucket, prefix)
    except _s3_errors() as error:
        raise _explain(error, uri, cfg, "list the bucket before uploading") from None
    index = _read_index(folder)
    sent = 0
    try:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = path.relative_to(folder).as_posix()
            obj, known, stat = remote.get(rel), index.get(rel), _stat(path)
            synced = bool(obj and known and known.get("etag") == obj["etag"])
            if synced and known.get("size") == stat["size"] and known.get("mtime_ns") == stat["mtime_ns"]:
                continue
            md5 = _md5_file(path)
            if obj and obj["size"] == stat["size"] and (_plain_md5(obj["etag"]) == md5
                                                        or (synced and known.get("md5") == md5)):
                index[rel] = {"etag": obj["etag"], **stat, "md5": md5}
                continue
            client.upload_file(str(path), bucket, prefix + rel)
            etag = client.head_object(Bucket=bucket, Key=prefix + rel).get("ETag", "")
            index[rel] = {"etag": etag, **stat, "md5": md5}
            sent += 1
    except _s3_errors() as error:
        raise _explain(error, uri, cfg, "upload the outputs") from None
    finally:
        _write_index(folder, index)
    return sent


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint(source: str, cfg: StorageConfig) -> str:
    """sha256 over a folder's (or s3:// prefix's) file names, sizes and modification times (local) or ETags (S3):
    it changes when a file is added, removed or replaced, so a pipeline's step cache and the retraining schedule
    notice new recordings."""
    digest = hashlib.sha256()
    if is_s3(source):
        client = s3_client(cfg)
        bucket, prefix = split_s3(source)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    digest.update(f"{obj['Key'][len(prefix):]}\0{obj['Size']}\0{obj['ETag']}\n".encode())
        except _s3_errors() as error:
            raise _explain(error, source, cfg, "list the recordings") from None
    else:
        root = Path(source).expanduser()
        if not root.is_dir():
            raise SourceError(f"{source}: no such folder; give the narrator's recordings folder or an s3:// prefix")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ local outputs

LOCK_FILE = ".narrator.lock"  # inside an output folder: who is writing into it
# errors that are the disk's or the permissions' fault, not narrator's: (what happened, what to do)
_USER_ERRNOS = {
    errno.ENOSPC: ("no space left on the disk", "free some space or choose another --out on a larger disk"),
    errno.EDQUOT: ("the disk quota is exhausted", "free some space or choose another --out"),
    errno.EROFS: ("the file system is read-only", "choose a writable --out"),
    errno.EACCES: ("permission denied", "make it writable for this user or choose another --out"),
    errno.EPERM: ("operation not permitted", "make it writable for this user or choose another --out"),
}


def is_user_os_error(error: BaseException) -> bool:
    """A full disk, exhausted quota, read-only file system or missing permission (not a bug)."""
    return isinstance(error, OSError) and error.errno in _USER_ERRNOS


def explain_os_error(error: OSError) -> str:
    """A full disk, read-only file system or missing permission met anywhere, in words that name the path."""
    what, _ = _USER_ERRNOS.get(error.errno, (error.strerror or str(error), ""))
    where = error.filename if error.filename is not None else "a file"
    return (f"{where}: {what}; this is a problem of the disk or of the permissions, not a bug: free some space, "
            "fix the permissions, or choose other paths")


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB"


def output_error(error: OSError, path: str | os.PathLike, needed_bytes: int | None = None) -> OutputError:
    """An OutputError naming `path` for a full disk, a read-only file system or a missing permission; for a full
    disk with `needed_bytes` known, how much space the outputs need and how much is free."""
    what, todo = _USER_ERRNOS.get(error.errno, (error.strerror or str(error), "check the disk and the folder"))
    space = ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT) and needed_bytes:
        space = f" (the outputs need about {_megabytes(needed_bytes)}; {_megabytes(_free_bytes(path))} are free)"
    return OutputError(f"cannot write {path}: {what}{space}; {todo}")


def _free_bytes(path: str | os.PathLike) -> int:
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def check_free_space(folder: Path, needed_bytes: int) -> None:
    """OutputError naming `folder` and the space needed when its disk has less than `needed_bytes` free."""
    free = _free_bytes(folder)
    if free < needed_bytes:
        raise OutputError(f"cannot write {folder}: no space left for the outputs (they need about "
                          f"{_megabytes(needed_bytes)}; {_megabytes(free)} are free); free some space or choose "
                          "another --out on a larger disk")


def temporary_name(path: Path) -> Path:
    """A hidden name beside `path` for its content while it is being written (`.NAME.PID.tmp`)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold `folder`'s lock (flock on `folder/.narrator.lock`, which names the holder) while the block runs.

    A second holder does not wait: it gets OutputBusy naming the first (what, pid, since when). A folder that cannot
    be written gives OutputError naming it; without flock (not POSIX, some network mounts) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{folder} (or a folder above it) is a file, not a folder: give a folder for the "
                          "outputs") from None
    except OSError as error:
        if is_user_os_error(error):
            raise output_error(error, folder) from None
        if error.errno == errno.ELOOP:
            raise OutputError(f"{path} is a link: remove it (the lock file must be a plain file)") from None
        raise
    with open(descriptor, "r+", encoding="utf-8") as handle:
        try:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(200).strip() or "another process"
            raise OutputBusy(f"{folder} is in use by another run ({holder}): wait for it to finish, or give "
                             "another --out") from None
        except OSError as error:  # no flock on this file system: go on unlocked
            log.warning("cannot lock %s (%s); make sure no other run writes into it", folder, error)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{what}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
        except OSError as error:
            if is_user_os_error(error):
                raise output_error(error, folder) from None
            raise
        yield
