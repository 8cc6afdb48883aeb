//! The built `kinsumer` binary: the demo's summary, its metrics endpoint, and bad flags.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn kinsumer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kinsumer"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn get(addr: &str, path: &str) -> Option<String> {
    let mut conn = TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn the_short_demo_loses_nothing() {
    let out = kinsumer()
        .args(["demo", "--short"])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}", out.status);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line");
    assert!(summary.contains("produced 2000"), "{summary}");
    assert!(summary.contains("lost 0,"), "{summary}");
}

#[test]
fn the_demo_serves_the_documented_metrics_to_prometheus() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = kinsumer()
        .args(["demo", "--short", "--metrics-addr", &addr, "--linger", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs");
    let names = [
        "kinsumer_records_fetched_total",
        "kinsumer_records_delivered_total",
        "kinsumer_records_acked_total",
        "kinsumer_checkpoints_total",
        "kinsumer_leases_taken_total",
        "kinsumer_leases_held",
        "kinsumer_live_clients",
        "kinsumer_watermark_lag_records",
        "kinsumer_ack_latency_seconds",
    ];
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(body) = get(&addr, "/metrics") {
            if names.iter().all(|n| body.contains(n)) {
                let _ = child.kill();
                let _ = child.wait();
                assert!(body.contains("application=\"demo\""), "labels: {body}");
                return;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the metrics endpoint never showed every documented name; last scrape:\n{last}");
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    for args in [
        vec!["demo", "--shards", "0"],
        vec!["demo", "--consumers", "99"],
        vec!["demo", "--records", "lots"],
        vec!["demo", "--metrics-addr", "not-an-address"],
    ] {
        let out = kinsumer().args(&args).output().expect("the binary runs");
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.trim().is_empty(), "{args:?} should say why");
    }
}
