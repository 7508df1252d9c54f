# The three buckets and the image repository.
# - pipeline-root: Kubeflow Pipelines' artifacts (kfp-launcher's defaultPipelineRoot); expires.
# - dvc: the DVC remote for data (params.yaml registry.remote for data); training reads it.
# - registry: registered prompt files and the production pointers (softprompt registry register --remote gs://...);
#   versioned, since a registered prompt must never silently change.

locals {
  bucket_prefix = var.bucket_prefix != "" ? var.bucket_prefix : var.project_id
}

resource "google_storage_bucket" "pipeline_root" {
  name                        = "${local.bucket_prefix}-pipeline-root"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  lifecycle_rule {
    condition {
      age            = var.pipeline_root_retention_days
      matches_prefix = ["runs/"] # run artifacts expire; lm-cache/ (reused adapted checkpoints) stays
      # KFP's cache may return a run's artifacts later: the pipeline's cached steps take a cache epoch of
      # params.yaml cluster.cache_max_age_days (< this age), so a cache hit never points at a deleted object.
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket" "dvc" {
  name                        = "${local.bucket_prefix}-dvc"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }
}

resource "google_storage_bucket" "registry" {
  name                        = "${local.bucket_prefix}-registry"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }
}

resource "google_artifact_registry_repository" "images" {
  project       = var.artifact_registry.project
  location      = var.artifact_registry.location
  repository_id = var.artifact_registry.repository
  format        = "DOCKER"
  description   = "softprompt component images (params.yaml cluster.image)"
  depends_on    = [google_project_service.apis]
}
