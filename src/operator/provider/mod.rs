//! The Cluster Autoscaler cloud provider.
