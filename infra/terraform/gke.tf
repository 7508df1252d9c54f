# The GKE cluster and its node pools. Three kinds of pool:
# - cpu: untainted, labelled from params.yaml cluster.cpu_pool.node_selector; light steps select it and the
#   Kubeflow Pipelines services run here;
# - gpu-<accelerator>: one per GPU entry of params.yaml cluster.accelerators, from zero nodes, tainted so
#   only steps that tolerate the taint (the pipeline's GPU steps) land there;
# - tpu-<accelerator>: the same for TPU slices (the paper-scale profile).
# GKE itself sets the cloud.google.com/gke-accelerator, gke-tpu-accelerator and gke-tpu-topology labels
# the pipeline selects on, from guest_accelerator.type, the TPU machine type and tpu_topology below (it
# refuses node pools that set labels under cloud.google.com/ by hand); the taints are explicit.

resource "google_container_cluster" "main" {
  name                = var.cluster_name
  location            = var.region
  node_locations      = var.node_zones
  network             = google_compute_network.vpc.id
  subnetwork          = google_compute_subnetwork.nodes.id
  deletion_protection = var.deletion_protection

  # Node pools are managed below; the default one only bootstraps the cluster.
  remove_default_node_pool = true
  initial_node_count       = 1

  release_channel {
    channel = "REGULAR"
  }

  # Pods get Google credentials only through Kubernetes service accounts bound to Google ones (iam.tf).
  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = "172.16.0.0/28"
  }

  cluster_autoscaling {
    autoscaling_profile = "OPTIMIZE_UTILIZATION"
  }
}

locals {
  node_oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
}

resource "google_container_node_pool" "cpu" {
  name     = "cpu"
  cluster  = google_container_cluster.main.id
  location = var.region

  autoscaling {
    min_node_count = 1
    max_node_count = var.cpu_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.cpu_machine_type
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_oauth_scopes
    labels          = var.cpu_pool.labels

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  for_each = var.gpu_pools

  name     = "gpu-${each.key}"
  cluster  = google_container_cluster.main.id
  location = var.region

  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.gpu_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = each.value.machine_type
    spot            = var.spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_oauth_scopes
    labels          = each.value.labels

    guest_accelerator {
      type  = each.value.accelerator_type
      count = each.value.accelerator_count
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    taint {
      key    = each.value.taint.key
      value  = each.value.taint.value
      effect = each.value.taint.effect
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "tpu" {
  for_each = var.tpu_pools

  name     = "tpu-${each.key}"
  cluster  = google_container_cluster.main.id
  location = var.region

  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.tpu_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  # A slice that spans several hosts must be placed compactly; a single-host slice takes its topology
  # from the machine type.
  dynamic "placement_policy" {
    for_each = each.value.multi_host ? [each.value.tpu_topology] : []
    content {
      type         = "COMPACT"
      tpu_topology = placement_policy.value
    }
  }

  node_config {
    machine_type    = each.value.machine_type
    spot            = var.spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = local.node_oauth_scopes
    labels          = each.value.labels

    taint {
      key    = each.value.taint.key
      value  = each.value.taint.value
      effect = each.value.taint.effect
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}
