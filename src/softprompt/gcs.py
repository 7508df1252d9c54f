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


class CheckpointMirror:
    """Training checkpoints kept under a gs:// prefix, one `PREFIX/<run key>/checkpoint-N/` per checkpoint, so a
    retried or preempted pod (a fresh disk) resumes where the last one stopped (softprompt.training.train's
    `checkpoint_store`). A checkpoint counts only once its COMPLETE marker is written, after all its files:
    a pod killed mid-upload leaves a partial checkpoint that is never resumed from."""

    COMPLETE = ".softprompt-complete"

    def __init__(self, uri: str) -> None:
        self.bucket_name, self.prefix = split_uri(uri)

    def _run_prefix(self, run_dir: Path) -> str:
        return f"{self.prefix}/{run_dir.name}".lstrip("/")

    def _blobs(self, run_dir: Path) -> list:
        return list(client().list_blobs(self.bucket_name, prefix=self._run_prefix(run_dir) + "/"))

    def restore(self, run_dir: Path) -> list[str]:
        """Download the run's complete checkpoints into `run_dir`; returns their names."""
        prefix = self._run_prefix(run_dir) + "/"
        blobs = self._blobs(run_dir)
        complete = {b.name[len(prefix):].split("/")[0] for b in blobs if b.name.endswith("/" + self.COMPLETE)}
        for blob in blobs:
            rel = blob.name[len(prefix):]
            if rel.split("/")[0] in complete and not rel.endswith(self.COMPLETE):
                dest = Path(run_dir) / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(str(dest), checksum="crc32c")
        return sorted(complete)

    def save(self, checkpoint: Path) -> None:
        """Upload one checkpoint (marker last), then drop the run's checkpoints the Trainer has rotated away."""
        run_dir = checkpoint.parent
        uri = f"gs://{self.bucket_name}/{self._run_prefix(run_dir)}/{checkpoint.name}"
        upload_dir(checkpoint, uri)
        client().bucket(self.bucket_name).blob(f"{split_uri(uri)[1]}/{self.COMPLETE}").upload_from_string("")
        kept = {p.name for p in run_dir.glob("checkpoint-*")}
        prefix = self._run_prefix(run_dir) + "/"
        self._delete([b for b in self._blobs(run_dir) if b.name[len(prefix):].split("/")[0] not in kept])

    def discard(self, run_dir: Path) -> None:
        """Delete the run's checkpoints: it finished, and its prompt is the output now."""
        self._delete(self._blobs(run_dir))

    def _delete(self, blobs: list) -> None:
        """Markers first: a deletion cut short leaves incomplete checkpoints, never one that looks complete."""
        for blob in sorted(blobs, key=lambda b: not b.name.endswith(self.COMPLETE)):
            blob.delete()
