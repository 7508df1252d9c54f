"""Google Cloud Storage access through google-cloud-storage (checksums verified on every download).

Credentials come from the environment (Application Default Credentials, Workload Identity on GKE);
`STORAGE_EMULATOR_HOST` points the client at a local emulator in tests.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import google_crc32c

from softprompt.errors import SoftpromptError
from softprompt.io import atomic_dir, write_json

MANIFEST = ".softprompt-gcs-manifest.json"  # in each downloaded copy: what it was downloaded from


def split_uri(uri: str) -> tuple[str, str]:
    """`gs://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    if not uri.startswith("gs://") or len(uri) <= 5:
        raise SoftpromptError(f"{uri}: not a gs:// URI (expected gs://BUCKET/PATH)")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "test"),
                              credentials=AnonymousCredentials())
    return storage.Client()


def file_crc32c(path: Path) -> str:
    """Base64 CRC32C of a file, the form GCS reports in `blob.crc32c`."""
    checksum = google_crc32c.Checksum()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode()


def download_prefix(uri: str, cache_root: str | Path) -> Path:
    """Download every object under `uri` into `cache_root/bucket/prefix`, verified by CRC32C.

    A complete, verified copy is reused: the manifest records each object's generation and checksum,
    and a changed object in the bucket invalidates the cache.
    """
    bucket_name, prefix = split_uri(uri)
    blobs = [b for b in client().list_blobs(bucket_name, prefix=prefix + "/" if prefix else None)
             if not b.name.endswith("/")]
    if not blobs:
        raise SoftpromptError(f"{uri}: no objects under this prefix; check the bucket and path")
    manifest = {b.name[len(prefix):].lstrip("/"): {"generation": b.generation, "crc32c": b.crc32c} for b in blobs}
    target = Path(cache_root) / bucket_name / prefix
    manifest_path = target / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return target
    with atomic_dir(target) as tmp:
        for blob in blobs:
            rel = blob.name[len(prefix):].lstrip("/")
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            # checksum="crc32c" makes the client verify the bytes and raise DataCorruption on mismatch.
            blob.download_to_filename(str(dest), checksum="crc32c")
            if blob.crc32c and file_crc32c(dest) != blob.crc32c:
                raise SoftpromptError(f"gs://{bucket_name}/{blob.name}: checksum mismatch after download")
        write_json(tmp / manifest_path.name, manifest)
    return target


def upload_dir(local: str | Path, uri: str) -> list[str]:
    """Upload a directory's files under `uri`; returns the object names."""
    bucket_name, prefix = split_uri(uri)
    bucket = client().bucket(bucket_name)
    names = []
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            name = f"{prefix}/{path.relative_to(local).as_posix()}".lstrip("/")
            blob = bucket.blob(name)
            blob.upload_from_filename(str(path), checksum="crc32c")
            names.append(name)
    return names
