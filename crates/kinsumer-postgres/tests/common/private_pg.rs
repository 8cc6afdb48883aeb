//! A private PostgreSQL instance in a temporary directory, on a free port, that a test may
//! stop and restart without disturbing the shared server. Runs as the `postgres` user (the
//! server refuses root). Always stopped and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct PrivatePg {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

fn newest_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn run(cmd: &mut Command) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {cmd:?}: {e}"),
    }
}

fn check(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    /// Initializes and starts an instance, or `None` (skip) where PostgreSQL's binaries or
    /// `runuser` are missing outside CI.
    pub fn start() -> Option<Self> {
        let bin = newest_bin();
        let runuser =
            Path::new("/usr/sbin/runuser").exists() || Path::new("/sbin/runuser").exists();
        let Some(bin) = bin.filter(|_| runuser) else {
            assert!(
                !ci(),
                "PostgreSQL server binaries are missing: run scripts/services.sh"
            );
            eprintln!(
                "\n*** SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql ***\n"
            );
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("kinsumer-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        check(
            "chown",
            run(Command::new("chown").arg("postgres:postgres").arg(&dir)),
        );
        let pg = Self { bin, dir, port };
        check(
            "initdb",
            run(pg
                .as_postgres("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(pg.data())),
        );
        pg.up();
        Some(pg)
    }

    fn as_postgres(&self, tool: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
        cmd
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        check(
            "pg_ctl start",
            run(self
                .as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("log"))
                .args(["-w", "-t", "30", "-o", &options, "start"])),
        );
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn kill(&self) {
        let out = run(self.as_postgres("pg_ctl").arg("-D").arg(self.data()).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
        check("pg_ctl stop", out);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
