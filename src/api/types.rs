//! The JSON bodies of the agent's API, shared by the server and `meshctl`.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// A node in `meshctl node ls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeOut {
    pub id: String,
    pub hostname: String,
    pub address: Ipv4Addr,
    pub status: String,
    #[serde(rename = "self")]
    pub is_self: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenOut {
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    #[serde(default = "overlay")]
    pub driver: String,
    pub subnet: Option<String>,
    pub gateway: Option<Ipv4Addr>,
}

fn overlay() -> String {
    "overlay".into()
}

/// A network in `network ls` and `network inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkOut {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub vni: u32,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub containers: Vec<ContainerOut>,
    #[serde(default)]
    pub endpoints: Vec<StaticEndpointOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachRequest {
    pub netns: String,
    pub network: String,
    pub service: Option<String>,
    pub name: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub ifname: Option<String>,
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachOut {
    pub ip: Ipv4Addr,
    pub mac: String,
    pub ifname: String,
}

/// How this agent is set up, as far as meshctl needs to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Its `--drain-timeout`: how long a task's detach may wait.
    pub drain_timeout_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachRequest {
    pub netns: String,
    pub network: String,
}

/// A container in `container ls`: every host's containers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerOut {
    pub name: String,
    pub netns: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub node: String,
    pub address: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticEndpointAdd {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub vtep: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticEndpointRm {
    pub network: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticEndpointOut {
    pub network: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub vtep: Ipv4Addr,
}

/// Every error the API returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorOut {
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceCreate {
    pub name: String,
    pub networks: Vec<String>,
    /// `PUBLISHED:TARGET[/tcp|/udp]` each.
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default = "vip")]
    pub endpoint_mode: String,
    #[serde(default = "rr")]
    pub scheduler: String,
}

fn vip() -> String {
    "vip".into()
}

fn rr() -> String {
    "rr".into()
}

/// A service's VIP on one of its networks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceNetworkOut {
    pub network: String,
    pub vip: Option<Ipv4Addr>,
    /// The balancer's counters for this VIP on the host asked (inspect only).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// A service in `service ls` and `service inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceOut {
    pub id: String,
    pub name: String,
    pub endpoint_mode: String,
    pub scheduler: String,
    pub networks: Vec<ServiceNetworkOut>,
    pub ports: Vec<String>,
    pub replicas: usize,
    #[serde(default)]
    pub tasks: Vec<TaskOut>,
}

/// A task in `service ps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskOut {
    pub name: String,
    pub netns: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub node: String,
    pub address: Option<Ipv4Addr>,
    pub weight: u32,
    pub state: String,
    /// Traffic to this task through the VIP, balanced on the host asked.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counters: std::collections::BTreeMap<String, u64>,
}
