# Service accounts, least privilege. Pods reach Google APIs only through Workload Identity: a Kubernetes
# service account (KSA) is bound to one Google service account (GSA).
#
#   GSA                      KSA (namespace var.kfp_namespace)    may
#   softprompt-nodes         (the nodes themselves)              write logs/metrics, pull the image
#   softprompt-pipeline      pipeline-runner (every KFP step)    read the DVC data; read/write the pipeline root
#   softprompt-registrar     softprompt-registrar                read/write the registry; read/write the pipeline root
#   softprompt-kfp           ml-pipeline, ml-pipeline-ui         read the pipeline root (artifact previews)
#
# Nothing but the registrar can write the registry bucket: training, evaluation and LM adaptation run as
# softprompt-pipeline, which has no role on it. Kubeflow Pipelines v2 runs all steps of a run under one
# KSA (there is no per-step service account), so the registration step authenticates as the registrar
# with the credentials mounted from the `softprompt-registry-gcs` secret, which only that step mounts
# (infra/README.md, "Registry credentials").

resource "google_service_account" "nodes" {
  account_id   = "softprompt-nodes"
  display_name = "softprompt GKE nodes"
}

resource "google_project_iam_member" "nodes" {
  for_each = toset([
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
  ])
  project = var.project_id
  role    = each.key
  member  = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_artifact_registry_repository_iam_member" "nodes_pull" {
  project    = google_artifact_registry_repository.images.project
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_service_account" "pipeline" {
  account_id   = "softprompt-pipeline"
  display_name = "softprompt pipeline steps (validate, LM-adapt, train, evaluate)"
}

resource "google_service_account" "registrar" {
  account_id   = "softprompt-registrar"
  display_name = "softprompt registration step (the only writer of the registry)"
}

resource "google_service_account" "kfp" {
  account_id   = "softprompt-kfp"
  display_name = "Kubeflow Pipelines API server and UI"
}

# Workload Identity: which KSA may act as which GSA.
locals {
  workload_identity = {
    pipeline  = { gsa = google_service_account.pipeline.name, ksa = "pipeline-runner" }
    registrar = { gsa = google_service_account.registrar.name, ksa = "softprompt-registrar" }
    kfp_api   = { gsa = google_service_account.kfp.name, ksa = "ml-pipeline" }
    kfp_ui    = { gsa = google_service_account.kfp.name, ksa = "ml-pipeline-ui" }
  }
}

resource "google_service_account_iam_member" "workload_identity" {
  for_each           = local.workload_identity
  service_account_id = each.value.gsa
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.kfp_namespace}/${each.value.ksa}]"
  depends_on         = [google_container_cluster.main] # the identity pool exists once the cluster does
}

# Bucket roles. objectUser: read, create, overwrite, delete objects (no bucket or IAM changes).
resource "google_storage_bucket_iam_member" "pipeline_root_pipeline" {
  bucket = google_storage_bucket.pipeline_root.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_storage_bucket_iam_member" "dvc_pipeline" {
  bucket = google_storage_bucket.dvc.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.pipeline.email}"
}

resource "google_storage_bucket_iam_member" "registry_registrar" {
  bucket = google_storage_bucket.registry.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.registrar.email}"
}

# The registration step's launcher reads its input artifacts (the best prompt, the evaluation) from the
# pipeline root and writes its outputs there.
resource "google_storage_bucket_iam_member" "pipeline_root_registrar" {
  bucket = google_storage_bucket.pipeline_root.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.registrar.email}"
}

resource "google_storage_bucket_iam_member" "pipeline_root_kfp" {
  bucket = google_storage_bucket.pipeline_root.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.kfp.email}"
}

resource "google_storage_bucket_iam_member" "dvc_writers" {
  for_each = toset(var.data_writers)
  bucket   = google_storage_bucket.dvc.name
  role     = "roles/storage.objectUser"
  member   = each.key
}
