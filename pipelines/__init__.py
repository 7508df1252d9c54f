"""Kubeflow pipelines over the components in `components/`."""
