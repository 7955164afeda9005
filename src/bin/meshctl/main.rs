//! meshctl: the command line for a mesh-agent. Flags in, API calls out.

use clap::Parser;
use mesh::api::client::Client;
use mesh::api::types::*;

mod cli;
use cli::*;

/// One line, as every meshctl error, from clap's message: its first
/// paragraph joined (the missing argument or the possible values are on the
/// lines after the first), or, for a command given without its subcommand
/// (clap prints the whole help), the usage line.
fn usage_error(text: &str, missing_subcommand: bool) -> String {
    if missing_subcommand {
        let usage = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Usage: "))
            .unwrap_or("meshctl <COMMAND>");
        return format!("error: a subcommand is missing: {usage} (see --help)");
    }
    format!("error: {}", mesh::cli::one_line(text))
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(e.kind(), DisplayHelp | DisplayVersion) {
                e.exit();
            }
            let missing = e.kind() == DisplayHelpOnMissingArgumentOrSubcommand;
            eprintln!("{}", usage_error(&e.to_string(), missing));
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("error: {}", e.lines().next().unwrap_or("failed"));
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let c = Client::new(cli.api);
    match cli.command {
        Command::Node(NodeCmd::Ls { format }) => {
            let nodes: Vec<NodeOut> = c.get("/v1/nodes").await?;
            if format == Format::Json {
                return print_json(&nodes);
            }
            let rows = nodes
                .iter()
                .map(|n| {
                    let id = if n.is_self {
                        format!("{} *", n.id)
                    } else {
                        n.id.clone()
                    };
                    vec![
                        id,
                        n.hostname.clone(),
                        n.address.to_string(),
                        n.status.clone(),
                    ]
                })
                .collect();
            table(&["ID", "HOSTNAME", "ADDRESS", "STATUS"], rows);
        }
        Command::Cluster(ClusterCmd::JoinToken) => {
            let t: JoinTokenOut = c.get("/v1/cluster/join-token").await?;
            println!("{}", t.token);
        }
        Command::Network(cmd) => network(&c, cmd).await?,
        Command::Service(cmd) => service(&c, cmd).await?,
        Command::Container(cmd) => container(&c, cmd).await?,
        Command::Endpoint(EndpointCmd::Add {
            network,
            ip,
            mac,
            vtep,
        }) => {
            let _: StaticEndpointOut = c
                .post(
                    "/v1/endpoints",
                    &StaticEndpointAdd {
                        network,
                        ip,
                        mac,
                        vtep,
                    },
                )
                .await?;
            println!("{ip}");
        }
        Command::Endpoint(EndpointCmd::Rm { network, ip }) => {
            let _: serde_json::Value = c
                .post("/v1/endpoints/rm", &StaticEndpointRm { network, ip })
                .await?;
            println!("{ip}");
        }
    }
    Ok(())
}

async fn network(c: &Client, cmd: NetworkCmd) -> Result<(), String> {
    match cmd {
        NetworkCmd::Create {
            driver,
            subnet,
            gateway,
            name,
        } => {
            let n: NetworkOut = c
                .post(
                    "/v1/networks",
                    &NetworkCreate {
                        name,
                        driver,
                        subnet,
                        gateway,
                    },
                )
                .await?;
            println!("{}", n.id);
        }
        NetworkCmd::Ls { format } => {
            let list: Vec<NetworkOut> = c.get("/v1/networks").await?;
            if format == Format::Json {
                return print_json(&list);
            }
            let rows = list
                .iter()
                .map(|n| {
                    vec![
                        n.id.clone(),
                        n.name.clone(),
                        n.driver.clone(),
                        n.vni.to_string(),
                        n.subnet.clone(),
                        n.gateway.to_string(),
                    ]
                })
                .collect();
            table(
                &["NETWORK ID", "NAME", "DRIVER", "VNI", "SUBNET", "GATEWAY"],
                rows,
            );
        }
        NetworkCmd::Inspect { name, format: _ } => {
            let n: NetworkOut = c.get(&one("networks", &name)?).await?;
            print_json(&n)?;
        }
        NetworkCmd::Rm { name } => remove(c, "networks", &name).await?,
    }
    Ok(())
}

async fn service(c: &Client, cmd: ServiceCmd) -> Result<(), String> {
    match cmd {
        ServiceCmd::Create {
            name,
            networks,
            publish,
            endpoint_mode,
            scheduler,
        } => {
            let s: ServiceOut = c
                .post(
                    "/v1/services",
                    &ServiceCreate {
                        name,
                        networks,
                        publish,
                        endpoint_mode,
                        scheduler,
                    },
                )
                .await?;
            println!("{}", s.id);
        }
        ServiceCmd::Ls { format } => {
            let list: Vec<ServiceOut> = c.get("/v1/services").await?;
            if format == Format::Json {
                return print_json(&list);
            }
            let rows = list
                .iter()
                .map(|s| {
                    let vips: Vec<String> = s
                        .networks
                        .iter()
                        .filter_map(|n| n.vip.map(|v| format!("{}:{v}", n.network)))
                        .collect();
                    let dash = |v: Vec<String>| {
                        if v.is_empty() {
                            "-".to_string()
                        } else {
                            v.join(",")
                        }
                    };
                    vec![
                        s.id.clone(),
                        s.name.clone(),
                        s.endpoint_mode.clone(),
                        s.replicas.to_string(),
                        s.scheduler.clone(),
                        dash(vips),
                        dash(s.ports.clone()),
                    ]
                })
                .collect();
            table(
                &[
                    "ID",
                    "NAME",
                    "MODE",
                    "REPLICAS",
                    "SCHEDULER",
                    "VIPS",
                    "PORTS",
                ],
                rows,
            );
        }
        ServiceCmd::Ps { name, format } => {
            let s: ServiceOut = c.get(&one("services", &name)?).await?;
            if format == Format::Json {
                return print_json(&s.tasks);
            }
            let rows = s
                .tasks
                .iter()
                .map(|t| {
                    let addr = t.address.map_or_else(|| "-".into(), |a| a.to_string());
                    vec![
                        t.name.clone(),
                        s.name.clone(),
                        addr,
                        t.network.clone(),
                        t.ip.to_string(),
                        t.state.clone(),
                    ]
                })
                .collect();
            table(&["NAME", "SERVICE", "NODE", "NETWORK", "IP", "STATE"], rows);
        }
        ServiceCmd::Inspect { name, format: _ } => {
            let s: ServiceOut = c.get(&one("services", &name)?).await?;
            print_json(&s)?;
        }
        ServiceCmd::Rm { name } => remove(c, "services", &name).await?,
    }
    Ok(())
}

async fn container(c: &Client, cmd: ContainerCmd) -> Result<(), String> {
    match cmd {
        ContainerCmd::Attach {
            netns,
            network,
            service,
            name,
            ip,
            ifname,
            weight,
        } => {
            let req = AttachRequest {
                netns,
                network,
                service,
                name,
                ip,
                ifname: Some(ifname),
                weight,
            };
            let out: AttachOut = c.post("/v1/containers/attach", &req).await?;
            println!("{}", out.ip);
        }
        ContainerCmd::Detach { netns, network } => {
            // A task's detach waits for its drain (the agent bounds it).
            let timeout = c.detach_timeout().await?;
            let _: serde_json::Value = c
                .with_timeout(timeout)
                .post(
                    "/v1/containers/detach",
                    &DetachRequest {
                        netns: netns.clone(),
                        network,
                    },
                )
                .await?;
            println!("{netns}");
        }
        ContainerCmd::Ls { format } => {
            let list: Vec<ContainerOut> = c.get("/v1/containers").await?;
            if format == Format::Json {
                return print_json(&list);
            }
            let rows = list
                .iter()
                .map(|x| {
                    let addr = x.address.map_or_else(|| "-".into(), |a| a.to_string());
                    vec![
                        x.name.clone(),
                        x.netns.clone(),
                        x.network.clone(),
                        x.ip.to_string(),
                        x.mac.clone(),
                        addr,
                    ]
                })
                .collect();
            table(
                &["NAME", "NETNS", "NETWORK", "IP", "MAC", "NODE ADDRESS"],
                rows,
            );
        }
    }
    Ok(())
}

/// The API path of the network or service (`kind`) called `name`.
fn one(kind: &str, name: &str) -> Result<String, String> {
    Ok(format!("/v1/{kind}/{}", path_segment(name)?))
}

/// Removes the network or service (`kind`) called `name`; prints its name.
async fn remove(c: &Client, kind: &str, name: &str) -> Result<(), String> {
    let _: serde_json::Value = c.delete(&one(kind, name)?).await?;
    println!("{name}");
    Ok(())
}

/// Names go into URL paths: refuse what would change the path.
fn path_segment(s: &str) -> Result<&str, String> {
    if s.is_empty()
        || s.contains(['/', '?', '#', '%', ' '])
        || !s.is_ascii()
        || s.contains(char::is_control)
    {
        return Err(format!(
            "invalid name '{s}': names are ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(s)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(args: &[&str]) -> String {
        let Err(e) = Cli::try_parse_from(args) else {
            panic!("{args:?} parsed");
        };
        let missing = e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
        usage_error(&e.to_string(), missing)
    }

    #[test]
    fn argument_errors_are_one_line_that_names_the_problem() {
        let e = parse_error(&["meshctl", "service", "create", "--name", "web"]);
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("error: "), "{e}");
        assert!(e.contains("--network"), "{e}");
        let e = parse_error(&["meshctl", "network", "ls", "--format", "yaml"]);
        assert!(
            !e.contains('\n') && e.contains("yaml") && e.contains("json"),
            "{e}"
        );
        let e = parse_error(&["meshctl", "service", "inspect", "web", "--format", "table"]);
        assert!(!e.contains('\n') && e.contains("table"), "{e}");
        let e = parse_error(&["meshctl", "network"]);
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("meshctl network"), "{e}");
    }
}
