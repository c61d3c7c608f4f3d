//! # shoal-tests: cluster harness and end-to-end tests
//!
//! The harness ([`ShoalProcess`]) starts real `shoal` processes on port 0
//! with their own data directories, reads the address they print when
//! ready, and can stop them gracefully (SIGTERM), kill them (SIGKILL) and
//! restart them on the same data. The tests in `tests/` use it:
//! - `api.rs`: the public API end to end through the SDK, health and
//!   reflection;
//! - `bad_input.rs`: every class of bad input gets a precise status;
//! - `durability.rs`: kill -9 during ingest loses no acknowledged point, and
//!   restarts serve the same results;
//! - `operations.rs` and `split.rs`: cluster operations and resharding on
//!   [`procs::ProcCluster`] under load (`shoalctl` driven as an operator
//!   would, through [`ctl`]).
//!
//! [`raft_cluster`] is the in-process Raft harness: one shard group on N
//! nodes with real RocksDB, gRPC and state machines, with stop, restart and
//! per-direction link cuts; `raft_group.rs` runs its fault scenarios.
//!
//! [`tls`] runs the process clusters with TLS (`SHOAL_TEST_TLS=1`), and
//! `security.rs` attacks a TLS cluster with authentication on.
//!
//! The `shoal` binary is found through `SHOAL_BIN`, or next to the test
//! executable's target directory (`cargo build --release --bins` first;
//! `.ci/run` does).
pub mod containers;
pub mod procs;
pub mod raft_cluster;
pub mod tls;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Path of the `shoal` binary under test.
pub fn shoal_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> -> target/<profile>/shoal
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    profile_dir.join("shoal")
}

/// The `shoalctl` binary next to `shoal` (`SHOALCTL_BIN` overrides).
pub fn shoalctl_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SHOALCTL_BIN") {
        return PathBuf::from(p);
    }
    shoal_bin().with_file_name("shoalctl")
}

/// Runs `shoalctl ARGS`; returns whether it succeeded, its stdout and its
/// stderr.
pub fn shoalctl(args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(shoalctl_bin());
    if tls::enabled() {
        // The operator certificate for nodes, the CA for everything.
        let p = tls::pki();
        cmd.env("SHOAL_CA", p.ca_file()).env("SHOAL_CLIENT_CERT", p.dir.join("operator.pem")).env("SHOAL_CLIENT_KEY", p.dir.join("operator.key"));
    }
    let out = cmd.args(args).output().expect("run shoalctl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `shoalctl -o json ARGS --node VIA` (an admin command against node
/// `via`); panics with its output on failure; returns its last JSON line.
pub fn ctl(via: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--node", via]);
    let t = Instant::now();
    let (ok, out, err) = shoalctl(&all);
    assert!(ok, "shoalctl {args:?} failed:\n{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("null")).unwrap_or(serde_json::Value::Null);
    let n = v["operations"].as_array().map_or(0, Vec::len);
    println!("shoalctl {} took {:.1} s ({n} operations)", args.join(" "), t.elapsed().as_secs_f64());
    v
}

/// Runs `shoalctl ARGS --node VIA`, which must fail with `why` in its
/// error output.
pub fn ctl_fails(via: &str, args: &[&str], why: &str) {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--node", via]);
    let (ok, out, err) = shoalctl(&all);
    assert!(!ok, "shoalctl {args:?} should fail:\n{out}");
    assert!(err.contains(why), "shoalctl {args:?}: expected {why:?} in:\n{err}");
}

/// A `shoal dev` process (coordinator + node).
pub struct ShoalProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub addr: String,
    /// The node's internal API address.
    pub internal: String,
}

impl ShoalProcess {
    /// Starts `shoal dev` on a free port over `data_dir` and waits until it
    /// prints its ready line.
    pub fn start(data_dir: &Path) -> Result<Self> {
        Self::start_with(data_dir, &[])
    }

    /// [`ShoalProcess::start`] with further `shoal dev` flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Result<Self> {
        let mut args = vec!["dev".to_string(), "--listen".into(), "127.0.0.1:0".into(), "--data-dir".into(), data_dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, line) = procs::spawn_ready_line(&args, "shoal dev ready: public=", "warn")?;
        let addr = line.split_whitespace().next().unwrap_or_default().to_string();
        let internal = line.split_whitespace().find_map(|w| w.strip_prefix("internal=")).unwrap_or_default().to_string();
        Ok(ShoalProcess { child: Some(child), data_dir: data_dir.to_path_buf(), addr, internal })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    /// SIGKILL: no chance to flush or save anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> Result<()> {
        match self.child.take() {
            Some(c) => terminate_child(c),
            None => Ok(()),
        }
    }

    /// Starts a new process on the same data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let next = ShoalProcess::start(&self.data_dir)?;
        *self = next;
        Ok(())
    }
}

impl Drop for ShoalProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends SIGTERM to a `shoal` child and waits up to 60 s for a clean exit
/// (then SIGKILLs it and fails).
pub fn terminate_child(mut c: Child) -> Result<()> {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = c.try_wait()? {
            anyhow::ensure!(st.success(), "shoal exited with {st}");
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            bail!("shoal did not stop within 60 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random vectors (splitmix64), for tests.
pub fn vector(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..dim)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}
