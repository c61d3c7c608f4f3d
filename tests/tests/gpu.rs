//! `--gpu` on the machine the tests run on. Without a GPU (every CI machine
//! so far): `on` refuses to start and says what is missing, `auto` serves
//! on the CPU and status says so. With one, `on` starts and status names
//! the device. The binary is built with the `cuda` feature either way, so
//! this also shows that it starts on a machine without CUDA.
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal_tests::procs::spawn_ready;
use shoal_tests::{shoal_bin, shoalctl};

fn dev_args(dir: &std::path::Path, gpu: &str) -> Vec<String> {
    ["dev", "--listen", "127.0.0.1:0", "--in-memory", "--sample", "0", "--gpu", gpu, "--data-dir"].iter().map(|s| s.to_string()).chain([dir.display().to_string()]).collect()
}

/// The node's row of `cluster status`.
fn node_status(addr: &str) -> serde_json::Value {
    let (ok, out, err) = shoalctl(&["--addr", addr, "-o", "json", "cluster", "status"]);
    assert!(ok, "cluster status failed: {err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["nodes"][0].clone()
}

#[test]
fn gpu_on_needs_a_gpu_and_auto_serves_without_one() {
    let dir = tempfile::tempdir().unwrap();
    // `on`: started with its output kept, given 60 s to fail or get ready.
    let mut child = Command::new(shoal_bin()).args(dev_args(&dir.path().join("on"), "on")).env("SHOAL_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let exited = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let has_gpu = match exited {
        Some(st) => {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(!st.success(), "--gpu on without a GPU exits with an error");
            assert!(err.contains("--gpu on") && err.contains("no device"), "and says why: {err}");
            false
        }
        None => {
            // It is serving: this machine has a GPU.
            let _ = child.kill();
            let _ = child.wait();
            true
        }
    };
    // `auto` serves either way; status shows which device it found.
    let (mut child, addr) = spawn_ready(&dev_args(&dir.path().join("auto"), "auto"), "shoal dev ready: public=", "warn").unwrap();
    let node = node_status(&addr);
    let _ = child.kill();
    let _ = child.wait();
    if has_gpu {
        assert!(node["device"].as_str().unwrap().starts_with("cuda:"), "{node}");
        assert!(node["gpu"]["memory_total_bytes"].as_u64().unwrap() > 0, "{node}");
    } else {
        assert_eq!(node["device"], "cpu", "{node}");
        assert!(node["gpu"].is_null(), "no GPU status without a GPU: {node}");
    }
}
