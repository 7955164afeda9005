//! The agent's API: HTTP/JSON over a unix socket (`/run/mesh-agent/api.sock`
//! by default), and the client `meshctl` uses.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | /v1/nodes | | [`types::NodeOut`] list |
//! | GET | /v1/cluster/join-token | | [`types::JoinTokenOut`] |
//! | GET, POST | /v1/networks | [`types::NetworkCreate`] | [`types::NetworkOut`] (list) |
//! | GET, DELETE | /v1/networks/NAME | | [`types::NetworkOut`] |
//! | GET | /v1/containers | | [`types::ContainerOut`] list |
//! | POST | /v1/containers/attach | [`types::AttachRequest`] | [`types::AttachOut`] |
//! | POST | /v1/containers/detach | [`types::DetachRequest`] | |
//! | POST | /v1/endpoints | [`types::StaticEndpointAdd`] | [`types::StaticEndpointOut`] |
//! | POST | /v1/endpoints/rm | [`types::StaticEndpointRm`] | |
//! | GET | /v1/stats | | dataplane counters |
//!
//! Errors are a status code with [`types::ErrorOut`]: one line saying what failed.

pub mod client;
pub mod server;
pub mod types;

/// The socket path used when neither `--api` nor `MESH_API` is given.
pub const DEFAULT_SOCKET: &str = "/run/mesh-agent/api.sock";
