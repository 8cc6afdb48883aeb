//! Rows, the printed table, the machine, and `BENCHMARKS.md`.

use std::process::Command;

use super::BenchArgs;

/// Whether a row met its goal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Measured and within the goal.
    Met,
    /// Measured and outside the goal: why, and what would fix it.
    Missed(String),
    /// Not measured, and why (an unreachable service, a failed run).
    NotMeasured(String),
    /// Measured, with no goal of its own (a baseline, or a figure shown for context).
    Info,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// `P1` … `P7`.
    pub id: &'static str,
    /// What was measured (and where).
    pub measure: String,
    /// The figure, or "—" when not measured.
    pub figure: String,
    /// The goal, as the issue states it.
    pub goal: String,
    pub verdict: Verdict,
    /// The command that reproduces it.
    pub command: String,
    /// How it was measured, raw numbers: shown under the table.
    pub details: Vec<String>,
}

impl Row {
    pub fn new(id: &'static str, measure: impl Into<String>, goal: impl Into<String>) -> Self {
        Self {
            id,
            measure: measure.into(),
            figure: "—".into(),
            goal: goal.into(),
            verdict: Verdict::Info,
            command: String::new(),
            details: Vec::new(),
        }
    }

    /// The same row marked not measured.
    pub fn not_measured(mut self, why: impl Into<String>) -> Self {
        self.figure = "—".into();
        self.verdict = Verdict::NotMeasured(why.into());
        self
    }

    /// The same row with `figure`, judged by `met` (with `why_not` when it is not).
    pub fn judged(
        mut self,
        figure: impl Into<String>,
        met: bool,
        why_not: impl Into<String>,
    ) -> Self {
        self.figure = figure.into();
        self.verdict = if met {
            Verdict::Met
        } else {
            Verdict::Missed(why_not.into())
        };
        self
    }

    pub fn with_command(mut self, command: String) -> Self {
        self.command = command;
        self
    }

    pub fn detail(mut self, line: impl Into<String>) -> Self {
        self.details.push(line.into());
        self
    }

    fn verdict_text(&self) -> String {
        match &self.verdict {
            Verdict::Met => "met".into(),
            Verdict::Missed(why) => format!("**missed**: {why}"),
            Verdict::NotMeasured(why) => format!("not measured: {why}"),
            Verdict::Info => "(baseline)".into(),
        }
    }

    /// One line for the terminal, as each scenario finishes.
    pub fn line(&self) -> String {
        format!(
            "{:3} {:<58} {:<44} {:<33} {}",
            self.id,
            self.measure,
            self.figure,
            self.goal,
            self.verdict_text().replace("**", "")
        )
    }
}

/// The machine the run happened on.
pub(crate) struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory: String,
    pub date: String,
    pub commit: String,
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The value of a `/proc` field given in kB (`VmHWM:   1234 kB`), in KiB.
pub(crate) fn proc_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = proc_kib(&meminfo, "MemTotal:").map_or_else(
            || "unknown".to_owned(),
            |kib| format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)),
        );
        let commit = match command_output("git", &["rev-parse", "--short=12", "HEAD"]) {
            Some(c) => {
                let dirty =
                    command_output("git", &["status", "--porcelain", "--untracked-files=no"])
                        .is_some();
                if dirty {
                    format!("{c} (with uncommitted changes in the working tree)")
                } else {
                    c
                }
            }
            None => "unknown".to_owned(),
        };
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory,
            date: command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_else(|| "unknown".to_owned()),
            commit,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "machine: {} cores (nproc), {}, {} memory; {}; commit {}",
            self.cores, self.cpu, self.memory, self.date, self.commit
        )
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The summary table, for the terminal.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:3} {:<58} {:<44} {:<33} {}\n",
        "id", "measure", "figure", "goal", "met?"
    );
    for r in rows {
        out.push_str(&r.line());
        out.push('\n');
    }
    out
}

/// The whole `BENCHMARKS.md`.
pub(crate) fn markdown(machine: &Machine, args: &BenchArgs, rows: &[Row]) -> String {
    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(
        "Written by `kinsumer-bench` (issue #8). The machine is shared and noisy, so speeds are \
         ratios to a baseline measured in the same run, or counts (requests, moves); latencies \
         of the protocol come from the deterministic simulation (virtual time, exact) and from \
         real time on Redis. A row that could not be measured says why — never a made-up \
         number. Reproduce a row with its command (start the services first: \
         `bash scripts/services.sh`).\n\n",
    );
    md.push_str("## Machine\n\n");
    md.push_str(&format!("- cores (`nproc`): {}\n", machine.cores));
    md.push_str(&format!("- CPU: {}\n", machine.cpu));
    md.push_str(&format!("- memory: {}\n", machine.memory));
    md.push_str(&format!("- date: {}\n", machine.date));
    md.push_str(&format!("- commit: {}\n", machine.commit));
    md.push_str(&format!(
        "- run: `kinsumer-bench{}`{}\n\n",
        if args.quick { " --quick" } else { "" },
        if cfg!(debug_assertions) {
            " — **a debug build: the speeds mean little**"
        } else {
            " (release build)"
        }
    ));
    md.push_str("## Results\n\n");
    md.push_str("| id | measure | figure | goal | met? | reproduce |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | `{}` |\n",
            r.id,
            cell(&r.measure),
            cell(&r.figure),
            cell(&r.goal),
            cell(&r.verdict_text()),
            cell(&r.command)
        ));
    }
    md.push_str("\n## How each figure was measured\n");
    let mut last = "";
    for r in rows {
        if r.details.is_empty() {
            continue;
        }
        if r.id != last {
            md.push_str(&format!("\n### {}\n", r.id));
            last = r.id;
        }
        md.push_str(&format!("\n**{}**\n\n", r.measure));
        for d in &r.details {
            md.push_str(&format!("- {d}\n"));
        }
    }
    md
}
