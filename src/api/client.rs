//! The API client `meshctl` uses: one HTTP/1.1 request per call over the
//! agent's unix socket.

use super::types::ErrorOut;
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

/// How long meshctl waits for a detach: the agent drains a task first,
/// for as long as its `--drain-timeout` allows, and answers when done.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(3600);

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
