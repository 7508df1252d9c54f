"""gs:// model sources against the local GCS emulator: download, checksum, cache reuse and invalidation."""

import pytest

from softprompt.errors import SoftpromptError
from softprompt.gcs import client, download_prefix, split_uri, upload_dir
from softprompt.models import load_base

BUCKET = "softprompt-models"


@pytest.fixture(scope="module")
def bucket(gcs_emulator):
    client().create_bucket(BUCKET)
    return BUCKET


def test_split_uri():
    assert split_uri("gs://b/some/prefix/") == ("b", "some/prefix")
    with pytest.raises(SoftpromptError, match="not a gs:// URI"):
        split_uri("s3://b/x")


def test_model_from_gs_uri_is_downloaded_verified_and_cached(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    tiny = load_base("tiny")
    tiny.model.save_pretrained(tmp_path / "ckpt")
    tiny.tokenizer.save_pretrained(tmp_path / "ckpt")
    names = upload_dir(tmp_path / "ckpt", f"gs://{bucket}/models/tiny")
    assert "models/tiny/config.json" in names

    loaded = load_base(f"gs://{bucket}/models/tiny")
    assert loaded.fingerprint == tiny.fingerprint and loaded.name == f"gs://{bucket}/models/tiny"
    local = tmp_path / "cache" / "gcs" / bucket / "models" / "tiny"
    assert (local / "model.safetensors").is_file()

    # Unchanged objects: the verified copy is reused, not downloaded again.
    stamp = (local / "model.safetensors").stat().st_mtime_ns
    download_prefix(f"gs://{bucket}/models/tiny", tmp_path / "cache" / "gcs")
    assert (local / "model.safetensors").stat().st_mtime_ns == stamp

    # A changed object in the bucket invalidates the cache; a corrupted local copy is replaced.
    (local / "model.safetensors").write_bytes(b"corrupt")
    (tmp_path / "ckpt" / "extra.txt").write_text("new object")
    upload_dir(tmp_path / "ckpt", f"gs://{bucket}/models/tiny")
    assert load_base(f"gs://{bucket}/models/tiny").fingerprint == tiny.fingerprint
    assert (local / "extra.txt").read_text() == "new object"


def test_empty_prefix_is_a_clear_error(bucket, tmp_path):
    with pytest.raises(SoftpromptError, match="no objects under this prefix"):
        download_prefix(f"gs://{bucket}/nothing-here", tmp_path)
