//! `kubectl homelab serve-grpc`: the Cluster Autoscaler externalgrpc provider on its own, fed by
//! reflectors on the cluster (Group CRs, Node CRs, Kubernetes Nodes).
use super::grpc_args::{GrpcArgs, cloud_config_yaml, name_the_flag, provider_config, server_tls};
use crate::operator::run::{run_provider, shutdown_signal};

pub async fn run(args: GrpcArgs) -> anyhow::Result<()> {
    if args.print_cloud_config {
        super::print_stdout(&cloud_config_yaml(&args))?;
        return Ok(());
    }
    // Read the TLS files before contacting the cluster: a wrong path is the likelier mistake.
    let tls = server_tls(&args)?;
    let cluster = args.kube.connect().await?;
    let config = provider_config(&args, args.kube.scope(&cluster), tls);
    run_provider(cluster.client, config, shutdown_signal())
        .await
        .map_err(name_the_flag)?;
    Ok(())
}
