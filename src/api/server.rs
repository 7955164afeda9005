//! The API server: routes HTTP requests on the unix socket to the agent.

use super::types::*;
use super::Gate;
use crate::agent::Agent;
use crate::cluster::model::{ContainerEndpoint, EndpointMode, Network, PortSpec, Service, View};
use crate::cluster::registry::{Mutation, Outcome};
use crate::pipeline::lb::stats::StatsRegistry;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// The largest request body accepted.
const MAX_BODY: usize = 1 << 20;

type Reply = Response<Full<Bytes>>;

/// Binds the socket (replacing a stale one) and serves until `gate` is
/// stopped (see [`Gate`]).
pub async fn serve(path: &Path, agent: Arc<Agent>, gate: Arc<Gate>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A live agent on this socket would answer; a dead one left a file.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another mesh-agent is serving {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    tracing::info!(socket = %path.display(), "API listening");
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = gate.stopped() => return Ok(()),
        };
        // The connection counts as in flight until its answer is written.
        let Some(connection) = gate.enter() else {
            return Ok(());
        };
        let (agent, gate) = (agent.clone(), gate.clone());
        let stopping = gate.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                let pass = gate.enter();
                // Each request runs to its end in a task of its own: if the
                // client goes away (meshctl interrupted or timed out), hyper
                // drops this future, but a detach half-way through its drain
                // (or any other change) still finishes instead of being cut
                // off where it stood.
                let work = tokio::spawn(async move {
                    let Some(_pass) = pass else {
                        return error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "mesh-agent is stopping; try again once it is back",
                        );
                    };
                    route(&agent, req).await
                });
                async move {
                    Ok::<_, std::convert::Infallible>(work.await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "an API request failed inside the agent");
                        json(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            &serde_json::json!({ "error": format!("the agent failed on this request: {e}") }),
                        )
                    }))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping.stopped() => {
                    // Answers the request under way, then closes.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
            drop(connection);
        });
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the answer: {e}\"}}").into_bytes()
    });
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: impl Into<String>) -> Reply {
    json(status, &ErrorOut { error: msg.into() })
}

/// Maps an error line to a status: refusals are the caller's to fix.
fn refused(msg: String) -> Reply {
    let status = if msg.contains("not found") {
        StatusCode::NOT_FOUND
    } else if msg.contains("already")
        || msg.contains("in use")
        || msg.contains("overlaps")
        || msg.contains("attached")
    {
        StatusCode::CONFLICT
    } else if msg.contains("did not answer") || msg.contains("no Ready node") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, msg)
}

async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Reply> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

async fn route(agent: &Agent, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["v1", "agent"]) => json(
            StatusCode::OK,
            &AgentInfo {
                drain_timeout_s: agent.drain_timeout.as_secs(),
            },
        ),
        (Method::GET, ["v1", "nodes"]) => json(StatusCode::OK, &nodes(&agent.view().await)),
        (Method::GET, ["v1", "cluster", "join-token"]) => json(
            StatusCode::OK,
            &JoinTokenOut {
                token: agent.cluster.join_token(),
            },
        ),
        (Method::GET, ["v1", "networks"]) => {
            let view = agent.view().await;
            let containers = agent.containers(&view);
            let list: Vec<NetworkOut> = view
                .networks
                .values()
                .map(|n| network_out(&view, n, &containers))
                .collect();
            json(StatusCode::OK, &list)
        }
        (Method::POST, ["v1", "networks"]) => {
            let b: NetworkCreate = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let m = Mutation::CreateNetwork {
                name: b.name,
                driver: b.driver,
                subnet: b.subnet,
                gateway: b.gateway,
            };
            match agent.cluster.mutate(m).await {
                Ok(Outcome::Network(n)) => {
                    let view = agent.view().await;
                    let out = network_out(&view, &n, &agent.containers(&view));
                    json(StatusCode::CREATED, &out)
                }
                Ok(other) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("unexpected answer {other:?}"),
                ),
                Err(e) => refused(e),
            }
        }
        (Method::GET, ["v1", "networks", name]) => {
            let view = agent.view().await;
            match view.find_network(name) {
                Some(n) => json(
                    StatusCode::OK,
                    &network_out(&view, n, &agent.containers(&view)),
                ),
                None => error(
                    StatusCode::NOT_FOUND,
                    crate::cluster::registry::not_found("network", name),
                ),
            }
        }
        (Method::DELETE, ["v1", "networks", name]) => match agent
            .cluster
            .mutate(Mutation::RemoveNetwork {
                name: name.to_string(),
            })
            .await
        {
            Ok(_) => json(StatusCode::OK, &serde_json::json!({ "removed": name })),
            Err(e) => refused(e),
        },
        (Method::GET, ["v1", "containers"]) => {
            json(StatusCode::OK, &agent.containers(&agent.view().await))
        }
        (Method::POST, ["v1", "containers", "attach"]) => match body::<AttachRequest>(req).await {
            Ok(b) => match agent.attach(b).await {
                Ok(out) => json(StatusCode::OK, &out),
                Err(e) => refused(e),
            },
            Err(r) => r,
        },
        (Method::POST, ["v1", "containers", "detach"]) => match body::<DetachRequest>(req).await {
            Ok(b) => match agent.detach(b).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({})),
                Err(e) => refused(e),
            },
            Err(r) => r,
        },
        (Method::POST, ["v1", "endpoints"]) => {
            let b: StaticEndpointAdd = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let mac = match b.mac.parse() {
                Ok(m) => m,
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
            };
            match agent
                .cluster
                .mutate(Mutation::AddStaticEndpoint {
                    network: b.network.clone(),
                    ip: b.ip,
                    mac,
                    vtep: b.vtep,
                })
                .await
            {
                Ok(_) => json(
                    StatusCode::CREATED,
                    &StaticEndpointOut {
                        network: b.network,
                        ip: b.ip,
                        mac: b.mac,
                        vtep: b.vtep,
                    },
                ),
                Err(e) => refused(e),
            }
        }
        (Method::POST, ["v1", "endpoints", "rm"]) => match body::<StaticEndpointRm>(req).await {
            Ok(b) => match agent
                .cluster
                .mutate(Mutation::RemoveStaticEndpoint {
                    network: b.network,
                    ip: b.ip,
                })
                .await
            {
                Ok(_) => json(StatusCode::OK, &serde_json::json!({})),
                Err(e) => refused(e),
            },
            Err(r) => r,
        },
        (Method::GET, ["v1", "services"]) => {
            let view = agent.view().await;
            let list: Vec<ServiceOut> = view
                .services
                .values()
                .map(|s| service_out(&view, s, false, &agent.lb_stats))
                .collect();
            json(StatusCode::OK, &list)
        }
        (Method::POST, ["v1", "services"]) => {
            let b: ServiceCreate = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let mode = match b.endpoint_mode.as_str() {
                "vip" => EndpointMode::Vip,
                "dnsrr" => EndpointMode::Dnsrr,
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("invalid --endpoint-mode '{other}': use vip or dnsrr"),
                    )
                }
            };
            let ports: Result<Vec<PortSpec>, String> =
                b.publish.iter().map(|p| p.parse()).collect();
            let ports = match ports {
                Ok(p) => p,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            if let Some(e) = ports.iter().find_map(|p| agent.reserved_port(p)) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            let m = Mutation::CreateService {
                name: b.name,
                networks: b.networks,
                ports,
                endpoint_mode: mode,
                scheduler: b.scheduler,
            };
            match agent.cluster.mutate(m).await {
                Ok(Outcome::Service(s)) => json(
                    StatusCode::CREATED,
                    &service_out(&agent.view().await, &s, false, &agent.lb_stats),
                ),
                Ok(other) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("unexpected answer {other:?}"),
                ),
                Err(e) => refused(e),
            }
        }
        (Method::GET, ["v1", "services", name]) => {
            let view = agent.view().await;
            match view.find_service(name) {
                Some(s) => json(
                    StatusCode::OK,
                    &service_out(&view, s, true, &agent.lb_stats),
                ),
                None => error(
                    StatusCode::NOT_FOUND,
                    crate::cluster::registry::not_found("service", name),
                ),
            }
        }
        (Method::DELETE, ["v1", "services", name]) => match agent
            .cluster
            .mutate(Mutation::RemoveService {
                name: name.to_string(),
            })
            .await
        {
            Ok(_) => json(StatusCode::OK, &serde_json::json!({ "removed": name })),
            Err(e) => refused(e),
        },
        (Method::GET, ["v1", "stats"]) => {
            let m: serde_json::Map<String, serde_json::Value> = agent
                .dataplane
                .counters
                .snapshot()
                .into_iter()
                .chain(agent.dns.stats.snapshot())
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            json(StatusCode::OK, &m)
        }
        (_, _) => error(
            StatusCode::NOT_FOUND,
            format!("no such API endpoint: {} {path}", req.method()),
        ),
    }
}

fn nodes(view: &View) -> Vec<NodeOut> {
    view.nodes
        .iter()
        .map(|n| NodeOut {
            id: n.id.clone(),
            hostname: n.record.hostname.clone(),
            address: n.record.address,
            status: if n.ready { "Ready" } else { "Down" }.into(),
            is_self: n.id == view.self_id,
        })
        .collect()
}

/// A network as `network ls` and `inspect` show it, with its containers
/// (from `containers`, every host's) and static endpoints: both lists, so
/// a script reading `ls --format json` sees them too.
fn network_out(view: &View, n: &Network, containers: &[ContainerOut]) -> NetworkOut {
    let containers = containers
        .iter()
        .filter(|c| c.network == n.name)
        .cloned()
        .collect();
    let endpoints = view
        .statics
        .iter()
        .filter(|s| s.network_id == n.id)
        .map(|s| StaticEndpointOut {
            network: n.name.clone(),
            ip: s.ip,
            mac: s.mac.to_string(),
            vtep: s.vtep,
        })
        .collect();
    NetworkOut {
        id: n.id.clone(),
        name: n.name.clone(),
        driver: n.driver.clone(),
        vni: n.vni,
        subnet: n.subnet.to_string(),
        gateway: n.gateway,
        containers,
        endpoints,
    }
}

fn service_out(view: &View, s: &Service, detail: bool, stats: &StatsRegistry) -> ServiceOut {
    let net_name = |id: &str| {
        view.networks
            .get(id)
            .map_or_else(|| id.to_string(), |n| n.name.clone())
    };
    let tasks: Vec<TaskOut> = view
        .tasks(&s.id)
        .map(|c| TaskOut {
            name: c.name.clone(),
            netns: c.netns.clone(),
            network: net_name(&c.network_id),
            ip: c.ip,
            node: c.node_id.clone(),
            address: view.node(&c.node_id).map(|n| n.record.address),
            weight: c.weight,
            state: if c.draining { "draining" } else { "running" }.into(),
            counters: match (detail, s.vips.get(&c.network_id)) {
                (true, Some(vip)) => stats
                    .backend(*vip, c.ip)
                    .snapshot()
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                _ => Default::default(),
            },
        })
        .collect();
    ServiceOut {
        id: s.id.clone(),
        name: s.name.clone(),
        endpoint_mode: match s.endpoint_mode {
            EndpointMode::Vip => "vip".into(),
            EndpointMode::Dnsrr => "dnsrr".into(),
        },
        scheduler: s.scheduler.clone(),
        networks: s
            .networks
            .iter()
            .map(|n| ServiceNetworkOut {
                network: net_name(n),
                vip: s.vips.get(n).copied(),
                counters: match (detail, s.vips.get(n)) {
                    (true, Some(vip)) => stats
                        .vip(*vip)
                        .snapshot()
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect(),
                    _ => Default::default(),
                },
            })
            .collect(),
        ports: s.ports.iter().map(ToString::to_string).collect(),
        // A container attached on several of the service's networks is
        // one task, listed once per network.
        replicas: view
            .tasks(&s.id)
            .map(ContainerEndpoint::container)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        tasks,
    }
}
