//! The API client `meshctl` uses: one HTTP/1.1 request per call over the
//! agent's unix socket.

use super::types::{AgentInfo, ErrorOut};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// How long meshctl waits for the agent (attach may wait for the leader).
const TIMEOUT: Duration = Duration::from_secs(30);

/// How long meshctl waits for a detach from an agent that does not say how
/// long its drains may take ([`Client::detach_timeout`]).
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a live agent takes at most to say how it is configured.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a detach may take beyond the drain (the leader, the interface).
const DETACH_SLACK: Duration = Duration::from_secs(60);

/// A connection target: the agent's socket.
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client {
            socket,
            timeout: TIMEOUT,
        }
    }

    /// The same target, waited for up to `timeout` per call.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            socket: self.socket.clone(),
            timeout,
        }
    }

    /// How long a detach may take on this agent: its drain timeout and some
    /// slack. Asks first, so that an agent that accepts connections but
    /// does not answer (stopped, wedged) fails the detach in seconds, not
    /// after the longest drain. An agent that answers but does not know the
    /// question gets [`DETACH_TIMEOUT`].
    pub async fn detach_timeout(&self) -> Result<Duration, String> {
        let info = tokio::time::timeout(
            PROBE_TIMEOUT,
            self.call_inner::<(), AgentInfo>(Method::GET, "/v1/agent", None),
        )
        .await
        .map_err(|_| {
            format!(
                "the agent at {} did not answer within {}s",
                self.socket.display(),
                PROBE_TIMEOUT.as_secs()
            )
        })?;
        Ok(match info {
            Ok(i) => Duration::from_secs(i.drain_timeout_s).saturating_add(DETACH_SLACK),
            Err(_) => DETACH_TIMEOUT,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.call(Method::GET, path, None::<&()>).await
    }
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, String> {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, String> {
        tokio::time::timeout(self.timeout, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                format!(
                    "the agent at {} did not answer within {}s",
                    self.socket.display(),
                    self.timeout.as_secs()
                )
            })?
    }

    async fn call_inner<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, String> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                format!(
                    "cannot reach mesh-agent at {}: {e} (is it running? set --api or MESH_API)",
                    self.socket.display()
                )
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("cannot talk to mesh-agent: {e}"))?;
        tokio::spawn(conn);
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "mesh-agent")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("mesh-agent closed the request: {e}"))?;
        let status = resp.status();
        let data = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("cannot read the agent's answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorOut>(&data) {
                Ok(e) => e.error,
                Err(_) => format!("mesh-agent answered {status}"),
            });
        }
        serde_json::from_slice(&data).map_err(|e| format!("cannot decode the agent's answer: {e}"))
    }
}
