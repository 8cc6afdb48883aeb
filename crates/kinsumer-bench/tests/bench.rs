//! The built `kinsumer-bench`: the cheap scenarios run, the table and `BENCHMARKS.md` have
//! their shape, an unreachable backend gives a "not measured" row, bad flags are refused.
//! Speed itself is never asserted here.

use std::path::PathBuf;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kinsumer-bench"))
}

/// A report path in the temp dir, removed when dropped.
struct TempReport(PathBuf);

impl TempReport {
    fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!("kinsumer-bench-{tag}-{}.md", std::process::id())))
    }
}

impl Drop for TempReport {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn quick_scenarios_write_a_report_with_every_row_and_the_machine() {
    let out = TempReport::new("shape");
    let run = bench()
        .args([
            "--quick",
            "--scenario",
            "p6,P3",
            "--redis",
            "redis://127.0.0.1:1",
        ])
        .arg("--out")
        .arg(&out.0)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        run.status
    );
    assert!(stdout.contains("machine: "), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("id ") && l.contains("met?")),
        "{stdout}"
    );

    let md = std::fs::read_to_string(&out.0).expect("the report was written");
    assert!(md.starts_with("# Benchmarks\n"), "{md}");
    for field in [
        "cores (`nproc`): ",
        "CPU: ",
        "memory: ",
        "date: ",
        "commit: ",
    ] {
        assert!(md.contains(field), "no {field:?} in\n{md}");
    }
    assert!(
        md.contains("| id | measure | figure | goal | met? | reproduce |"),
        "{md}"
    );
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| P")).collect();
    // Scenarios run in order: P3 (a leave, then a join after a crash) in simulation and on
    // Redis, then four P6 rows (join and leave at two sizes).
    assert_eq!(rows.len(), 8, "{md}");
    for row in &rows {
        assert_eq!(row.matches(" | ").count(), 5, "six cells: {row}");
    }
    for row in &rows[4..] {
        assert!(
            row.starts_with("| P6 | leases moved when a client"),
            "{row}"
        );
        assert!(row.contains("| met |"), "{row}");
        assert!(
            row.contains("`cargo run --release -p kinsumer-bench -- --scenario P6 --quick --redis redis://127.0.0.1:1`"),
            "{row}"
        );
    }
    assert!(
        rows[0].starts_with("| P3 |") && rows[0].contains("simulation"),
        "{}",
        rows[0]
    );
    assert!(
        rows[0].contains("p99 ") && rows[0].contains("| met |"),
        "{}",
        rows[0]
    );
    for redis in [rows[1], rows[3]] {
        assert!(
            redis.contains("Redis")
                && redis.contains("not measured: Redis not reachable at redis://127.0.0.1:1"),
            "{redis}"
        );
    }
    assert!(
        rows[2].contains("joined < TTL after a crash")
            && rows[2].contains("simulation")
            && rows[2].contains("| met |"),
        "{}",
        rows[2]
    );
    assert!(md.contains("## How each figure was measured"), "{md}");
}

#[test]
fn an_unknown_scenario_is_refused() {
    let out = TempReport::new("refused");
    let run = bench()
        .args(["--scenario", "P9"])
        .arg("--out")
        .arg(&out.0)
        .output()
        .expect("the binary runs");
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("unknown scenario `P9`"), "{stderr}");
    assert!(!out.0.exists(), "nothing written");
}
