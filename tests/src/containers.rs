//! Shoal nodes as containers: each `shoal node` runs in its own container
//! on a private Docker network, with its own IP address and a named volume
//! for its data, so a test can do to one node what happens to a host: kill
//! -9 the container, freeze it (`docker pause`), cut it off the network
//! (`docker network disconnect`: a partition), restart it.
//!
//! The image is built `FROM scratch` by `deploy/build-image.sh` out of the
//! binaries under test. Nodes advertise `IP:7400`; the test process and a
//! `shoal coordinator` on the host reach them through the network's
//! bridge, so nothing is published on a fixed host port. Every name (the
//! network, containers, volumes) starts with a per-run prefix, and
//! everything is removed when the cluster is dropped.
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::{CoordProc, Nodes};
use crate::shoal_bin;

/// The port every node container listens on for the internal API.
pub const INTERNAL_PORT: u16 = 7400;

/// Runs `docker ARGS`; returns stdout, or an error with stderr.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output().context("running docker")?;
    if !out.status.success() {
        bail!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds the image `tag` from the binaries under test.
pub fn build_image(tag: &str) -> Result<()> {
    let bin_dir = shoal_bin().parent().context("binary directory")?.to_path_buf();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/build-image.sh");
    let out = Command::new("bash").arg(&script).arg(tag).env("SHOAL_BIN_DIR", &bin_dir).output().context("running deploy/build-image.sh")?;
    if !out.status.success() {
        bail!("building image {tag}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// One node container.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: u64,
    pub name: String,
    pub ip: String,
    /// Running (not killed or stopped); a paused container counts as up.
    pub up: bool,
    /// Attached to the cluster network.
    pub connected: bool,
}

impl Container {
    pub fn addr(&self) -> String {
        format!("{}:{INTERNAL_PORT}", self.ip)
    }
}

/// N node containers and a coordinator process on the host.
pub struct DockerCluster {
    pub prefix: String,
    pub network: String,
    pub nodes: Vec<Container>,
    coordinator: Option<CoordProc>,
}

impl DockerCluster {
    /// Starts `n` nodes from `image` (node 1 bootstraps, the others join
    /// through it) and a coordinator over them, and waits until every node
    /// is in every node's map.
    pub async fn start(n: u64, image: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let prefix = format!("shoaltest-{}-{}", std::process::id(), nanos % 1_000_000);
        let network = format!("{prefix}-net");
        // A private /24 no other network uses (docker refuses overlaps).
        let mut subnet = None;
        for i in 0..40u32 {
            let third = (nanos / 7 + i * 37) % 250 + 2;
            let candidate = format!("10.231.{third}");
            if docker(&["network", "create", "--driver", "bridge", "--subnet", &format!("{candidate}.0/24"), &network]).is_ok() {
                subnet = Some(candidate);
                break;
            }
        }
        let subnet = subnet.context("no free 10.231.x.0/24 subnet for the test network")?;
        let nodes: Vec<Container> = (1..=n).map(|id| Container { id, name: format!("{prefix}-n{id}"), ip: format!("{subnet}.{}", 10 + id), up: false, connected: true }).collect();
        // TLS and API keys on, as in production (the harness's calls carry
        // the operator certificate and the admin key).
        let tls_dir = crate::tls::container_dir(n);
        let seed = nodes[0].addr();
        let others = nodes[1..].iter().map(Container::addr).collect::<Vec<_>>().join(",");
        let mut c = DockerCluster { prefix, network, nodes, coordinator: None };
        for i in 0..c.nodes.len() {
            let node = c.nodes[i].clone();
            let mut args: Vec<String> = ["run", "-d", "--name", &node.name, "--hostname", &format!("shoal-{}", node.id), "--network", &c.network, "--ip", &node.ip]
                .iter()
                .map(|s| s.to_string())
                .collect();
            args.extend(["-v".into(), format!("{}:/data", node.name), "-v".into(), format!("{}:/tls:ro", tls_dir.display()), "-e".into(), "SHOAL_TLS_DIR=/tls".into(), "-e".into(), "SHOAL_LOG=info,openraft=warn".into(), "--stop-timeout".into(), "10".into(), image.into()]);
            args.extend(["node", "--node-id", &node.id.to_string(), "--data-dir", "/data", "--internal-listen", &format!("0.0.0.0:{INTERNAL_PORT}"), "--advertise", &node.addr()].iter().map(|s| s.to_string()));
            // As in compose and the StatefulSet: node 1 may bootstrap, but
            // only once every other node answers that it has no cluster.
            if node.id == 1 {
                args.push("--bootstrap".into());
                args.extend(["--join".into(), others.clone()]);
            } else {
                args.extend(["--join".into(), seed.clone()]);
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            docker(&refs)?;
            c.nodes[i].up = true;
        }
        let addrs: Vec<String> = c.nodes.iter().map(Container::addr).collect();
        c.coordinator = Some(CoordProc::start(&addrs)?);
        c.view().wait_members(n as usize, Duration::from_secs(120)).await.with_context(|| format!("cluster did not form; logs of node 1:\n{}", c.logs(1)))?;
        Ok(c)
    }

    /// The coordinator's public address (on loopback).
    pub fn coordinator(&self) -> &str {
        self.coordinator.as_ref().map_or("", |c| c.addr.as_str())
    }

    fn node(&mut self, id: u64) -> &mut Container {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// Nodes the test can reach: up and on the network.
    pub fn view(&self) -> Nodes {
        Nodes(self.nodes.iter().filter(|n| n.up && n.connected).map(|n| (n.id, n.addr())).collect())
    }

    /// SIGKILL to the container's process: no flush, no goodbye.
    pub fn kill9(&mut self, id: u64) -> Result<()> {
        let name = self.node(id).name.clone();
        docker(&["kill", "--signal", "KILL", &name])?;
        self.node(id).up = false;
        Ok(())
    }

    /// Starts a stopped or killed container again (same data, same IP).
    pub fn start_again(&mut self, id: u64) -> Result<()> {
        let name = self.node(id).name.clone();
        docker(&["start", &name])?;
        self.node(id).up = true;
        Ok(())
    }

    /// Graceful restart: SIGTERM, up to 10 s to exit, then start.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        let name = self.node(id).name.clone();
        docker(&["restart", "-t", "10", &name])?;
        Ok(())
    }

    /// Freezes every process of the container (cgroup freezer).
    pub fn pause(&mut self, id: u64) -> Result<()> {
        docker(&["pause", &self.node(id).name.clone()]).map(drop)
    }

    pub fn unpause(&mut self, id: u64) -> Result<()> {
        docker(&["unpause", &self.node(id).name.clone()]).map(drop)
    }

    /// Cuts the node off the network: nobody reaches it, it reaches nobody.
    pub fn disconnect(&mut self, id: u64) -> Result<()> {
        let (net, name) = (self.network.clone(), self.node(id).name.clone());
        docker(&["network", "disconnect", "--force", &net, &name])?;
        self.node(id).connected = false;
        Ok(())
    }

    /// Heals [`DockerCluster::disconnect`], with the node's old address.
    pub fn connect(&mut self, id: u64) -> Result<()> {
        let (net, name, ip) = (self.network.clone(), self.node(id).name.clone(), self.node(id).ip.clone());
        docker(&["network", "connect", "--ip", &ip, &net, &name])?;
        self.node(id).connected = true;
        Ok(())
    }

    /// The last lines of a node's log (for failure messages).
    pub fn logs(&self, id: u64) -> String {
        let name = self.nodes.iter().find(|n| n.id == id).map(|n| n.name.clone()).unwrap_or_default();
        Command::new("docker").args(["logs", "--tail", "40", &name]).output().map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))).unwrap_or_default()
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = docker(&["rm", "-f", "-v", &n.name]);
            let _ = docker(&["volume", "rm", "-f", &n.name]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

/// `deploy/k8s-rehearsal.yml` brought up under its own compose project:
/// the StatefulSet's pods (`shoal-N`, reachable as
/// `shoal-N.shoal-headless.default.svc.cluster.local`) and a coordinator.
/// The test reaches containers by their IPs on the project's network, so
/// no fixed host port is needed. `docker-compose down -v` on drop.
pub struct Rehearsal {
    pub project: String,
    file: std::path::PathBuf,
    image: String,
    /// SHOAL_REHEARSAL_TLS: certificates and API keys for the pods.
    tls: std::path::PathBuf,
}

impl Rehearsal {
    /// `docker-compose up -d` of the rehearsal with `image`.
    pub fn up(image: &str) -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let project = format!("shoalreh{}x{}", std::process::id(), nanos % 1_000_000);
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s-rehearsal.yml");
        let tls = crate::tls::container_dir(3);
        let r = Rehearsal { project, file, image: image.to_string(), tls };
        r.compose(&["up", "-d"])?;
        Ok(r)
    }

    /// Runs `docker-compose -p PROJECT -f deploy/k8s-rehearsal.yml ARGS`.
    pub fn compose(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("docker-compose")
            .args(["-p", &self.project, "-f"])
            .arg(&self.file)
            .args(args)
            .env("SHOAL_IMAGE", &self.image)
            .env("SHOAL_REHEARSAL_TLS", &self.tls)
            .output()
            .context("running docker-compose")?;
        if !out.status.success() {
            bail!("docker-compose {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The IP address of a service's container on the project's network.
    pub fn ip(&self, service: &str) -> Result<String> {
        let id = self.compose(&["ps", "-q", service])?;
        let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id.trim()])?;
        if ip.is_empty() {
            bail!("{service} has no IP address (not running?)");
        }
        Ok(ip)
    }

    /// The pods as (node id, IP:7400): node id = ordinal + 1.
    pub fn nodes(&self, pods: u64) -> Result<Nodes> {
        Ok(Nodes((0..pods).map(|i| Ok((i + 1, format!("{}:{INTERNAL_PORT}", self.ip(&format!("shoal-{i}"))?)))).collect::<Result<_>>()?))
    }

    /// Pod `i` loses its volume: the container and the volume are removed,
    /// and the pod is created again, empty (a replaced PersistentVolume).
    pub fn replace_pod_with_empty_volume(&self, i: u64) -> Result<()> {
        let pod = format!("shoal-{i}");
        self.compose(&["rm", "-s", "-f", &pod])?;
        docker(&["volume", "rm", &format!("{}_data-{pod}", self.project)])?;
        self.compose(&["up", "-d", &pod]).map(drop)
    }

    /// The last lines of a service's log (for failure messages).
    pub fn logs(&self, service: &str) -> String {
        self.compose(&["logs", "--tail", "40", service]).unwrap_or_else(|e| e.to_string())
    }
}

impl Drop for Rehearsal {
    fn drop(&mut self) {
        if std::env::var_os("SHOAL_KEEP_CONTAINERS").is_some() {
            eprintln!("kept compose project {} (SHOAL_KEEP_CONTAINERS)", self.project);
            return;
        }
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "2"]);
    }
}
