//! Agent-to-agent requests over TCP on the gossip port (as Docker uses TCP and
//! UDP 7946): a joining agent presents the token, and hosts send cluster-wide
//! changes to the leader. One JSON line each way per connection, with
//! timeouts on both sides; every request carries the token.

use super::registry::{Mutation, Outcome};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long one request may take, connect to answer, beside the leader's
/// own work on a change.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// How long a leader works on a change before it refuses it (it may wait
/// to catch up with gossip, or for a detach on its way). The asker waits
/// this long more than [`TIMEOUT`]: an asker that gave up first would
/// report a failure for a change that was made.
pub const DECIDE_LIMIT: Duration = Duration::from_secs(5);
/// The largest request or answer line accepted.
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "req", rename_all = "snake_case")]
pub enum Request {
    Join { token: String },
    Mutate { token: String, mutation: Mutation },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Joined,
    Done { outcome: Outcome },
    Refused { error: String },
}

/// Errors reaching another agent.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach {0}: {1}")]
    Unreachable(SocketAddr, String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0} sent an answer that is not valid: {1}")]
    BadAnswer(SocketAddr, String),
}

/// Sends one request and reads the answer.
pub async fn call(addr: SocketAddr, req: &Request) -> Result<Response, RpcError> {
    let limit = match req {
        Request::Join { .. } => TIMEOUT,
        Request::Mutate { .. } => TIMEOUT + DECIDE_LIMIT,
    };
    tokio::time::timeout(limit, call_inner(addr, req))
        .await
        .map_err(|_| RpcError::Timeout(addr, limit))?
}

async fn call_inner(addr: SocketAddr, req: &Request) -> Result<Response, RpcError> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| RpcError::Unreachable(addr, e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| RpcError::BadAnswer(addr, e.to_string()))?;
    line.push(b'\n');
    s.write_all(&line)
        .await
        .map_err(|e| RpcError::Unreachable(addr, e.to_string()))?;
    let mut answer = String::new();
    BufReader::new(s.take(MAX_LINE))
        .read_line(&mut answer)
        .await
        .map_err(|e| RpcError::Unreachable(addr, e.to_string()))?;
    serde_json::from_str(&answer).map_err(|e| RpcError::BadAnswer(addr, e.to_string()))
}

/// Reads one request from `s`, answers it with `handle`, closes.
pub async fn serve_one<F, Fut>(s: TcpStream, handle: F)
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let peer = s.peer_addr().ok();
    let work = async move {
        let (r, mut w) = s.into_split();
        let mut line = String::new();
        BufReader::new(r.take(MAX_LINE))
            .read_line(&mut line)
            .await
            .ok()?;
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req).await,
            Err(e) => Response::Refused {
                error: format!("malformed request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&resp).ok()?;
        out.push(b'\n');
        w.write_all(&out).await.ok()
    };
    if tokio::time::timeout(TIMEOUT + DECIDE_LIMIT, work)
        .await
        .is_err()
    {
        tracing::debug!(?peer, "cluster request timed out");
    }
}
