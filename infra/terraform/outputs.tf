output "cluster_name" {
  value = google_container_cluster.main.name
}

output "get_credentials" {
  description = "Point kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.main.name} --region ${var.region} --project ${var.project_id}"
}

output "pipeline_root" {
  value = "gs://${google_storage_bucket.pipeline_root.name}/runs"
}

output "lm_cache_root" {
  description = "For the pipeline's lm_cache_root parameter: adapted checkpoints, kept (outside the expiring runs/ prefix)."
  value       = "gs://${google_storage_bucket.pipeline_root.name}/lm-cache"
}

output "dvc_remote" {
  value = "gs://${google_storage_bucket.dvc.name}"
}

output "registry_remote" {
  value = "gs://${google_storage_bucket.registry.name}"
}

# infra/kubeflow/gcp.env: what the Kubeflow overlay needs from this project (terraform output -raw kubeflow_env > ../kubeflow/gcp.env).
output "kubeflow_env" {
  value = <<-EOT
    defaultPipelineRoot=gs://${google_storage_bucket.pipeline_root.name}/runs
    pipelineServiceAccount=${google_service_account.pipeline.email}
    registrarServiceAccount=${google_service_account.registrar.email}
    kfpServiceAccount=${google_service_account.kfp.email}
  EOT
}

output "registrar_email" {
  description = "The registry's only writer (infra/README.md, Registry credentials)."
  value       = google_service_account.registrar.email
}
