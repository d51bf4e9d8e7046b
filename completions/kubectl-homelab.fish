# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_kubectl_homelab_global_optspecs
    string join \n log= h/help V/version
end

function __fish_kubectl_homelab_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_kubectl_homelab_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_kubectl_homelab_using_subcommand
    set -l cmd (__fish_kubectl_homelab_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "run-operator" -d 'Run the operator: CA gRPC provider, controllers (leader only), health and metrics'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "serve-grpc" -d 'Serve the Cluster Autoscaler externalgrpc cloud provider on its own'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "power" -d 'Power machines on or off by hand (the operator carries it out)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "maintenance" -d 'Take machines out of service (drained, left alone by the autoscaler) and pause groups'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "fsm" -d 'Inspect machine lifecycles, or print the lifecycle transition table'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "energy" -d 'What each machine and group used, cost and saved, from the Node CRs\' energy counters'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "crd" -d 'Print the CustomResourceDefinitions generated from the Rust types'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "simulate" -d 'Dry-run scaling on virtual time with the real decision code'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "completion" -d 'Print shell completions'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l listen -d 'Address to serve gRPC on' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l advertise-address -d 'host:port the Cluster Autoscaler dials, for `--print-cloud-config` (with mTLS, the host must be a name in the server certificate). Default: the listen address, or 127.0.0.1 when listening on every interface' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l tls-cert -d 'PEM server certificate (chain) for TLS; needs --tls-key' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l tls-key -d 'PEM private key of --tls-cert' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l client-ca -d 'PEM CA bundle: when given, clients must present a certificate it signed (mTLS)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l api-timeout -d 'Deadline for the API server writes of one mutating RPC; keep it below 3s (the provider\'s own bound) and the Cluster Autoscaler\'s grpc_timeout (5s by default), so CA gets our error, not its own timeout' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l sync-timeout -d 'How long to wait for the caches to sync before giving up at start-up' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l gpu-label -d 'Node label whose value names a machine\'s GPU model: the Cluster Autoscaler\'s GPULabel. CA asks once and keeps the answer for its lifetime' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l gpu-type -d 'A GPU model (a value of --gpu-label) for the Cluster Autoscaler\'s GetAvailableGPUTypes; repeat for several. CA asks once and keeps the answer for its lifetime' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l cloud-config-tls-dir -d 'Directory where the Cluster Autoscaler pod mounts its client certificate (tls.crt, tls.key) and the CA of our server certificate (ca.crt), for `--print-cloud-config`' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l leader-elect -d 'Elect one leader among the replicas through a Lease: only the leader reconciles and answers mutating gRPC calls. `false` for a single replica' -r -f -a "true\t''
false\t''"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l lease-name -d 'Name of the leader election Lease' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l lease-namespace -d 'Namespace of the Lease (default: the pod\'s namespace, else the Group/Node CRs\' namespace)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l lease-identity -d 'This replica\'s holder identity (default: pod name, process id and start time)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l lease-duration -d 'How long the Lease stays valid after a renewal; a killed leader is replaced after about this long (whole seconds)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l lease-renew-grace -d 'Renew the Lease this long before it expires (whole seconds, less than --lease-duration)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l readiness-requires-leader -d 'With --leader-elect: report ready only while leading, so a Service in front of the replicas sends the Cluster Autoscaler to the leader (followers answer mutating calls with Unavailable)' -r -f -a "true\t''
false\t''"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l health-address -d 'Address of the /healthz, /readyz and /metrics server' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l shutdown-timeout -d 'How long the controllers and gRPC calls in flight get to finish after SIGTERM' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l drain-timeout -d 'How long a drain for a power-off not started by the Cluster Autoscaler may try to evict pods (PodDisruptionBudgets may refuse) before the power-off is given up and the machine left on, with the reason in its status' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l not-ready-grace -d 'How long a running machine\'s Node may be NotReady before it is recorded as lost (a shorter blip is ignored)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l retry-backoff -d 'Delay before retrying a failed power operation; doubles per failed attempt' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l retry-backoff-max -d 'Longest delay between retries' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l max-attempts -d 'Failed attempts after which a machine stays Failed until its desired power changes or someone runs `kubectl homelab power on|off` again' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l concurrency -d 'Machines reconciled at once (one machine is never reconciled twice at once)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l pod-service-account -d 'ServiceAccount of the pods the operator creates (power Jobs, node agents, Wake-on-LAN relays) when a Node CR\'s pod spec names none; give it no API rights (the Helm chart\'s `<fullname>-power`, e.g. `homelab-kubectl-homelab-power`). Default: the namespace\'s `default`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l allowed-image -d 'An image the privileged node agent and the host-network Wake-on-LAN relay may run: exact, or a prefix ending in `*`; repeat for several. A Node CR naming another is refused' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l node-agent-command -d 'A command the node agent may run on the host (words separated by spaces); repeat for several. A Node CR naming another is refused' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l job-service-account -d 'A ServiceAccount a Node CR\'s `job` driver may name (in the CR\'s namespace); repeat for several. Without it a CR that names one is refused. The operator\'s own is always refused' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l operator-service-account -d 'The operator\'s own ServiceAccount, NAMESPACE/NAME, which no pod it creates may use. Default: read from the pod\'s service-account token' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l allow-privileged-jobs -d 'Let a Node CR\'s `job` driver ask for a privileged container or the host\'s network' -r -f -a "true\t''
false\t''"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l adopt-node-selector -d 'Kubernetes Nodes with these labels (KEY=VALUE,...) may be adopted by a Node CR without the `infra.homecluster.dev/adoptable=true` label. Control-plane nodes never are' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l max-node-provision-time -d 'The `--max-node-provision-time` the Cluster Autoscaler runs with (give both the same value): Groups without `maxNodeProvisionTime` check their members\' boot timeouts and learned boot times against it' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l energy-write-interval -d 'How often a running machine\'s energy counters (`status.energy`) are written at most. Lifecycle transitions write them at once; a machine that is off is not written' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l electricity -d 'The electricity tariff of machines whose Group sets none, as JSON or YAML in the shape of a Group\'s `spec.electricity`, e.g. \'{pricePerKWh: 0.30, currency: EUR}\'' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -l print-cloud-config -d 'Print the Cluster Autoscaler cloud-config YAML for this server and exit'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand run-operator" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l listen -d 'Address to serve gRPC on' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l advertise-address -d 'host:port the Cluster Autoscaler dials, for `--print-cloud-config` (with mTLS, the host must be a name in the server certificate). Default: the listen address, or 127.0.0.1 when listening on every interface' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l tls-cert -d 'PEM server certificate (chain) for TLS; needs --tls-key' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l tls-key -d 'PEM private key of --tls-cert' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l client-ca -d 'PEM CA bundle: when given, clients must present a certificate it signed (mTLS)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l api-timeout -d 'Deadline for the API server writes of one mutating RPC; keep it below 3s (the provider\'s own bound) and the Cluster Autoscaler\'s grpc_timeout (5s by default), so CA gets our error, not its own timeout' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l sync-timeout -d 'How long to wait for the caches to sync before giving up at start-up' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l gpu-label -d 'Node label whose value names a machine\'s GPU model: the Cluster Autoscaler\'s GPULabel. CA asks once and keeps the answer for its lifetime' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l gpu-type -d 'A GPU model (a value of --gpu-label) for the Cluster Autoscaler\'s GetAvailableGPUTypes; repeat for several. CA asks once and keeps the answer for its lifetime' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l cloud-config-tls-dir -d 'Directory where the Cluster Autoscaler pod mounts its client certificate (tls.crt, tls.key) and the CA of our server certificate (ca.crt), for `--print-cloud-config`' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -l print-cloud-config -d 'Print the Cluster Autoscaler cloud-config YAML for this server and exit'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand serve-grpc" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -s l -l selector -d 'Select the machines by their Node CRs\' labels (e.g. `rack=top,gpu!=true`)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l group -d 'Select the machines of this group (the Node CRs labelled `group=NAME`)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l dry-run -d 'Change nothing: `client` prints what would change; `server` also sends the change to the API server as a dry run (admission and validation run, nothing is stored). `--dry-run` alone is `client`' -r -f -a "none\t''
client\t''
server\t''"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -s o -l output -d 'Output format: the machines as `fsm inspect` prints them (table, wide, name, json, yaml); one line per machine when omitted' -r -f -a "table\t'The table (`fsm inspect`\'s default)'
wide\t'The table with more columns, long ones uncut'
name\t'`node.infra.homecluster.dev/NAME`, one a line'
json\t'The rows\' fields as a JSON list'
yaml\t'The same as YAML'"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l timeout -d 'Give up waiting after this long (with --wait)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l no-headers -d 'Print the table without its header line (-o table|wide)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -l wait -d 'Follow each machine\'s lifecycle phase until it is Ready (on) or Off (off), Failed, or refused by the operator (NotPermitted)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -s y -l yes -d 'Power off machines that run pods without asking (they are drained first)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand power" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -f -a "start" -d 'Take machines out of service: drain them, keep them out of every scale-up and scale-down, and set their power'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -f -a "end" -d 'End the maintenance of machines: uncordon them and give them back to the autoscaler'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -f -a "pause" -d 'Pause a group: no power action in it, the autoscaler\'s or the operator\'s own'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -f -a "resume" -d 'Resume a paused group'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and not __fish_seen_subcommand_from start end pause resume help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -l power -d 'The machine\'s power during the maintenance' -r -f -a "keep\t'Leave it as it is'
on\t'Power it on (after the drain)'
off\t'Power it off after the drain'"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -l until -d 'End it by itself: after a duration (`2h`, `90m`) or at a time (RFC 3339)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -l reason -d 'Why, shown in `fsm inspect` and Events' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -l drain-timeout -d 'Give up the drain after this long (the maintenance stays recorded; run `start` again once the PodDisruptionBudgets allow, or `end` it)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -s y -l yes -d 'Drain machines that run pods without asking'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from start" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from end" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from end" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from end" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from end" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from end" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from end" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from end" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from pause" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from pause" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from pause" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from pause" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from pause" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from pause" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from pause" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from resume" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from resume" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from resume" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from resume" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from resume" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from resume" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from resume" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from help" -f -a "start" -d 'Take machines out of service: drain them, keep them out of every scale-up and scale-down, and set their power'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from help" -f -a "end" -d 'End the maintenance of machines: uncordon them and give them back to the autoscaler'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from help" -f -a "pause" -d 'Pause a group: no power action in it, the autoscaler\'s or the operator\'s own'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from help" -f -a "resume" -d 'Resume a paused group'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand maintenance; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and not __fish_seen_subcommand_from inspect help" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and not __fish_seen_subcommand_from inspect help" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and not __fish_seen_subcommand_from inspect help" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and not __fish_seen_subcommand_from inspect help" -f -a "inspect" -d 'Show every machine\'s lifecycle phase: desired vs observed power, since when, attempts, last error and next retry'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and not __fish_seen_subcommand_from inspect help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -s f -l filename -d 'Read Node CRs from a YAML file (`-` for stdin) instead of the cluster: a List as `kubectl get nodes.infra.homecluster.dev -o yaml` prints, multi-document YAML, or a single object. Other kinds in the file (e.g. Groups) are skipped' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -s o -l output -d 'Output format: `wide` adds columns and prints long ones (LAST ERROR) uncut' -r -f -a "table\t'The table (`fsm inspect`\'s default)'
wide\t'The table with more columns, long ones uncut'
name\t'`node.infra.homecluster.dev/NAME`, one a line'
json\t'The rows\' fields as a JSON list'
yaml\t'The same as YAML'"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -l graph -d 'Print the lifecycle transition table as a graph instead (default: mermaid)' -r -f -a "mermaid\t''
dot\t''
markdown\t''"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -l no-headers -d 'Print the table without its header line'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from inspect" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from help" -f -a "inspect" -d 'Show every machine\'s lifecycle phase: desired vs observed power, since when, attempts, last error and next retry'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand fsm; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -s n -l namespace -d 'Namespace (default: the context\'s namespace, or the pod\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -s f -l filename -d 'Read Node CRs from a YAML file (`-` for stdin) instead of the cluster, as `fsm inspect -f` does' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -l since -d 'Only the last DURATION (e.g. `24h`, `168h`); default: since the counters began. The Node CRs keep 14 days of daily figures' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -s o -l output -d 'Output format: `wide` adds metered, baseline and estimated figures' -r -f -a "table\t''
wide\t''
json\t''
yaml\t''"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -s A -l all-namespaces -d 'Every namespace'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -l no-headers -d 'Print the tables without their header lines'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand energy" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and not __fish_seen_subcommand_from gen help" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and not __fish_seen_subcommand_from gen help" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and not __fish_seen_subcommand_from gen help" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and not __fish_seen_subcommand_from gen help" -f -a "gen" -d 'Print both CRDs as one multi-document YAML (for `kubectl apply -f -`), or write one file per CRD with `--out`'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and not __fish_seen_subcommand_from gen help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and __fish_seen_subcommand_from gen" -l out -d 'Write `<plural>.<group>.yaml` files into this directory instead of printing' -r -f -a "(__fish_complete_directories)"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and __fish_seen_subcommand_from gen" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and __fish_seen_subcommand_from gen" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and __fish_seen_subcommand_from gen" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and __fish_seen_subcommand_from help" -f -a "gen" -d 'Print both CRDs as one multi-document YAML (for `kubectl apply -f -`), or write one file per CRD with `--out`'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand crd; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l seed -d 'Override the scenario\'s seed' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l duration -d 'Override the scenario\'s duration (e.g. 48h, 90m)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l plot -d 'Write an SVG plot of machines on and pending pods over time' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -s o -l output -d 'Output format' -r -f -a "table\t''
json\t''"
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -s n -l namespace -d 'Namespace of the Groups and Nodes for --from-cluster (default: the kubeconfig\'s)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l kubeconfig -d 'Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else the pod\'s service account)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l context -d 'The kubeconfig context to use (default: its current context)' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l seeds -d 'Run N seeds (from --seed or the scenario\'s) and report each figure\'s median and 10th/90th percentiles' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l compare -d 'Compare scenario files side by side on the same seeds (after FILE, if given)' -r -F
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l set -d 'A variant of the scenario to compare: KEY=VALUE[,KEY=VALUE...] with KEY a field path (e.g. autoscaler.scaleDownUnneededTime=30m). Repeat for more variants' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l timeline -d 'Print the events (scale-ups, power actions, boots, failures) with virtual timestamps'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l print-default-scenario -d 'Print the embedded default scenario and exit'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l from-cluster -d 'Take the Groups and Nodes from the live cluster (kubeconfig or in-cluster); everything else (workload, autoscaler, simulation defaults) from FILE or the default scenario'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -l no-baselines -d 'Skip the baseline runs (the same workload with every machine on, and with only the machines the scenario starts with on)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand simulate" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand completion" -l log -d 'Log filter (tracing EnvFilter syntax), e.g. `info` or `kubectl_homelab=debug`' -r
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand completion" -l complete -d 'Internal: complete the words after `--` (called by `kubectl_complete-homelab`)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand completion" -s h -l help -d 'Print help'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand completion" -s V -l version -d 'Print version'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "run-operator" -d 'Run the operator: CA gRPC provider, controllers (leader only), health and metrics'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "serve-grpc" -d 'Serve the Cluster Autoscaler externalgrpc cloud provider on its own'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "power" -d 'Power machines on or off by hand (the operator carries it out)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "maintenance" -d 'Take machines out of service (drained, left alone by the autoscaler) and pause groups'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "fsm" -d 'Inspect machine lifecycles, or print the lifecycle transition table'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "energy" -d 'What each machine and group used, cost and saved, from the Node CRs\' energy counters'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "crd" -d 'Print the CustomResourceDefinitions generated from the Rust types'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "simulate" -d 'Dry-run scaling on virtual time with the real decision code'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "completion" -d 'Print shell completions'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and not __fish_seen_subcommand_from run-operator serve-grpc power maintenance fsm energy crd simulate completion help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and __fish_seen_subcommand_from maintenance" -f -a "start" -d 'Take machines out of service: drain them, keep them out of every scale-up and scale-down, and set their power'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and __fish_seen_subcommand_from maintenance" -f -a "end" -d 'End the maintenance of machines: uncordon them and give them back to the autoscaler'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and __fish_seen_subcommand_from maintenance" -f -a "pause" -d 'Pause a group: no power action in it, the autoscaler\'s or the operator\'s own'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and __fish_seen_subcommand_from maintenance" -f -a "resume" -d 'Resume a paused group'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and __fish_seen_subcommand_from fsm" -f -a "inspect" -d 'Show every machine\'s lifecycle phase: desired vs observed power, since when, attempts, last error and next retry'
complete -c kubectl-homelab -n "__fish_kubectl_homelab_using_subcommand help; and __fish_seen_subcommand_from crd" -f -a "gen" -d 'Print both CRDs as one multi-document YAML (for `kubectl apply -f -`), or write one file per CRD with `--out`'
