# Settings a platform engineer chooses (terraform.tfvars; see terraform.tfvars.example).

variable "project_id" {
  description = "GCP project that holds the cluster, the buckets and the service accounts."
  type        = string
}

variable "region" {
  description = "Region of the cluster, its network and the buckets."
  type        = string
  default     = "us-central1"
}

variable "node_zones" {
  description = "Zones the node pools use; pick ones that offer every accelerator in params.yaml (L4, A100 80GB and TPU v5e are all in us-central1-a)."
  type        = list(string)
  default     = ["us-central1-a"]
}

variable "cluster_name" {
  type    = string
  default = "softprompt"
}

variable "bucket_prefix" {
  description = "Bucket names are <bucket_prefix>-pipeline-root, -dvc and -registry (globally unique); defaults to the project id."
  type        = string
  default     = ""
}

variable "kfp_namespace" {
  description = "Namespace Kubeflow Pipelines runs its steps in (standalone install: kubeflow)."
  type        = string
  default     = "kubeflow"
}

variable "cpu_machine_type" {
  description = "CPU pool machines: light steps (validation, registration) and the Kubeflow Pipelines services."
  type        = string
  default     = "e2-standard-4"
}

variable "cpu_max_nodes" {
  type    = number
  default = 4
}

variable "gpu_max_nodes" {
  description = "Upper bound of each GPU pool; every accelerator pool scales from zero."
  type        = number
  default     = 4
}

variable "tpu_max_nodes" {
  type    = number
  default = 2
}

variable "spot" {
  description = "Spot VMs for the accelerator pools: much cheaper, preemptible (the pipeline retries GPU steps 3 times)."
  type        = bool
  default     = true
}

variable "pipeline_root_retention_days" {
  description = "Pipeline artifacts older than this are deleted (registered prompts live in the registry bucket); equal to params.yaml cluster.pipeline_root_retention_days, above cluster.cache_max_age_days."
  type        = number
  default     = 90
}

variable "deletion_protection" {
  type    = bool
  default = true
}

variable "data_writers" {
  description = "Members that push data to the DVC remote (e.g. group:ml-team@example.com); the pipeline only reads it."
  type        = list(string)
  default     = []
}

# Generated from params.yaml `cluster:` into node_pools.auto.tfvars.json by `make infra-tfvars`
# (python -m softprompt.cluster tfvars): the node selectors and tolerations the pipeline's steps use are
# the labels and taints these pools carry. Do not set them by hand.

variable "artifact_registry" {
  description = "Where the component image (params.yaml cluster.image) lives."
  type        = object({ location = string, project = string, repository = string })
}

variable "cpu_pool" {
  type = object({ labels = map(string) })
}

variable "gpu_pools" {
  type = map(object({
    machine_type      = string
    accelerator_type  = string
    accelerator_count = number
    labels            = map(string)
    taint             = object({ key = string, value = string, effect = string })
  }))
}

variable "tpu_pools" {
  type = map(object({
    machine_type = string
    tpu_topology = string
    multi_host   = bool
    labels       = map(string)
    taint        = object({ key = string, value = string, effect = string })
  }))
}
