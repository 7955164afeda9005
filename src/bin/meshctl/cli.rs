//! meshctl's commands and flags, as ARCHITECTURE.md gives them.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "meshctl",
    version,
    about = "Control a mesh cluster through a mesh-agent"
)]
pub(crate) struct Cli {
    /// The agent's API socket.
    #[arg(long, env = "MESH_API", value_name = "PATH", default_value = mesh::api::DEFAULT_SOCKET, global = true)]
    pub(crate) api: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The cluster itself.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Overlay networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Services: names, VIPs and published ports for groups of containers.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Containers attached to networks.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Static endpoints behind VTEPs that run no agent.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    Table,
    Json,
}

/// `inspect` prints JSON only (as `docker inspect`); `--format json` is
/// accepted, and anything else refused rather than ignored.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub(crate) enum InspectFormat {
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCmd {
    /// List nodes; '*' marks this one.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCmd {
    /// Print the token a joining agent needs.
    JoinToken,
}

#[derive(Subcommand, Debug)]
pub(crate) enum NetworkCmd {
    /// Create an overlay network; prints its ID.
    Create {
        #[arg(long, default_value = "overlay")]
        driver: String,
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
        #[arg(long, value_name = "IP")]
        gateway: Option<Ipv4Addr>,
        name: String,
    },
    /// List networks.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one network as JSON.
    Inspect {
        name: String,
        #[arg(long, value_enum, default_value = "json")]
        format: InspectFormat,
    },
    /// Remove a network.
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCmd {
    /// Create a service; prints its ID. Its tasks are containers attached with --service.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long = "network", value_name = "NET", required = true)]
        networks: Vec<String>,
        #[arg(long, value_name = "PUB:TARGET[/tcp|/udp]")]
        publish: Vec<String>,
        #[arg(long, value_name = "vip|dnsrr", default_value = "vip")]
        endpoint_mode: String,
        #[arg(long, value_name = "rr|wrr|lc|sh|mh", default_value = "rr")]
        scheduler: String,
    },
    /// List services.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List a service's tasks.
    Ps {
        name: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one service as JSON.
    Inspect {
        name: String,
        #[arg(long, value_enum, default_value = "json")]
        format: InspectFormat,
    },
    /// Remove a service (it must have no tasks).
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ContainerCmd {
    /// Give a network namespace an interface on a network; prints the IP.
    Attach {
        #[arg(long, value_name = "NAME|PATH")]
        netns: String,
        #[arg(long, value_name = "NET")]
        network: String,
        #[arg(long, value_name = "SVC")]
        service: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        #[arg(long, value_name = "N")]
        weight: Option<u32>,
    },
    /// Remove a namespace's interface on a network.
    Detach {
        #[arg(long, value_name = "NAME|PATH")]
        netns: String,
        #[arg(long, value_name = "NET")]
        network: String,
    },
    /// List the containers of every host.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum EndpointCmd {
    /// Register an endpoint behind a VTEP that runs no agent.
    Add {
        #[arg(long)]
        network: String,
        #[arg(long)]
        ip: Ipv4Addr,
        #[arg(long)]
        mac: String,
        #[arg(long)]
        vtep: Ipv4Addr,
    },
    /// Remove a static endpoint.
    Rm {
        #[arg(long)]
        network: String,
        #[arg(long)]
        ip: Ipv4Addr,
    },
}
