//! The agent's API: HTTP/JSON over a unix socket (`/run/mesh-agent/api.sock`
//! by default), and the client `meshctl` uses.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | /v1/agent | | [`types::AgentInfo`] |
//! | GET | /v1/nodes | | [`types::NodeOut`] list |
//! | GET | /v1/cluster/join-token | | [`types::JoinTokenOut`] |
//! | GET, POST | /v1/networks | [`types::NetworkCreate`] | [`types::NetworkOut`] (list) |
//! | GET, DELETE | /v1/networks/NAME | | [`types::NetworkOut`] |
//! | GET | /v1/containers | | [`types::ContainerOut`] list |
//! | POST | /v1/containers/attach | [`types::AttachRequest`] | [`types::AttachOut`] |
//! | POST | /v1/containers/detach | [`types::DetachRequest`] | |
//! | POST | /v1/endpoints | [`types::StaticEndpointAdd`] | [`types::StaticEndpointOut`] |
//! | POST | /v1/endpoints/rm | [`types::StaticEndpointRm`] | |
//! | GET, POST | /v1/services | [`types::ServiceCreate`] | [`types::ServiceOut`] (list) |
//! | GET, DELETE | /v1/services/NAME | | [`types::ServiceOut`] |
//! | GET | /v1/stats | | dataplane counters |
//!
//! When the agent stops, it takes no new requests (the socket goes, a
//! request on an open connection gets 503) and waits, bounded, for those
//! it is working on: an attach finishes (and is saved, so the next start
//! cleans up after it), and a detach finishes its drain.
//!
//! Errors are a status code with [`types::ErrorOut`]: one line saying what failed.

pub mod client;
mod gate;
pub mod server;
pub mod types;

pub use gate::Gate;

/// The socket path used when neither `--api` nor `MESH_API` is given.
pub const DEFAULT_SOCKET: &str = "/run/mesh-agent/api.sock";
