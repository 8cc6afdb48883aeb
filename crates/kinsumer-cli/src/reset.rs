//! `kinsumer reset`: move checkpoints, through the store's fenced operations only.
//!
//! For each chosen lease the command reads the row, prints the plan (current owner, token and
//! checkpoint → new checkpoint), asks for confirmation, then:
//! - an **unowned** lease gets `reset_checkpoint(token)`: it succeeds only if nobody took the
//!   lease since it was read, so a reset never races a reader;
//! - an **owned** lease is taken over first — `take(token)` as `kinsumer-cli-<pid>`, then
//!   `release` with the new checkpoint. The old owner's next checkpoint fails with `LeaseLost`
//!   and it lets go; the engine hands the lease to a live client, which resumes at the new
//!   checkpoint. Records the old owner delivered in between may be delivered again
//!   (at-least-once). This needs `--force` when the owner has a client row (it is live, or not
//!   yet known to be dead); an owner with no row has left, and its lease is taken without.
//!
//! Nothing is written when any chosen shard is refused (owned without `--force`, finished),
//! when a shard has no lease, or when the confirmation is not given. A lost race (`LeaseLost`)
//! is reported per shard; the other shards are still reset. Exit codes: 0 every shard reset,
//! 1 refused or a shard failed, 2 bad usage or an unreachable store.

use std::io::{BufRead, IsTerminal, Write};

use kinsumer::{Checkpoint, ClientId, Lease, LeaseStore, StoreError};

use crate::Result;
use crate::backends::{
    Access, StartAt, StoreUrl, brief, checkpoint_text, format_rfc3339, open_store,
};
use crate::status::{emit, table};

/// Examples and exit codes at the end of `kinsumer reset --help`.
const AFTER_HELP: &str = "\
Examples:
  kinsumer reset --store redis://127.0.0.1:6379 --app billing --stream orders --all --to trim-horizon
  kinsumer reset --store postgres://user:pass@db:5432/kinsumer --app billing --stream orders \\
      --shard shardId-000000000001 --to timestamp:2026-11-26T07:00:00Z --yes
  kinsumer reset --store 'dynamodb://leases?region=eu-west-1' --app billing --stream orders \\
      --shard shardId-000000000001 --to sequence:49590338271490256608559692538361571095921575989136588898 --force

Positions: trim-horizon (the oldest retained record), latest (records written after the next
reader opens), timestamp:RFC3339 (the first record that arrived at or after it, e.g.
2026-11-26T08:00:00.250+01:00), sequence:N (resume AFTER record N, as if it was the last one
processed; sequence:N/S after user record S of a KPL aggregate).

The plan is printed first; on a terminal you are asked to confirm, otherwise pass --yes. A shard
owned by a registered client (live, or not yet known to be dead) is refused unless --force: then
the lease is taken from its owner and released at the new checkpoint, and the owner's next
checkpoint fails (it lets go; records it delivered meanwhile may come again).

Exit codes: 0 every chosen shard reset; 1 refused, not confirmed, or a shard failed (e.g. its
lease changed meanwhile); 2 bad usage or an unreachable store.";

/// Flags of `kinsumer reset`.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["shards", "all"])))]
pub struct ResetArgs {
    /// The lease store: memory://, redis://HOST:PORT, postgres://USER:PASS@HOST/DB[?schema=S],
    /// dynamodb://TABLE?region=R[&endpoint=URL].
    #[arg(long, value_name = "URL")]
    pub store: StoreUrl,
    /// The application (the consumers' `Config::application`).
    #[arg(long, value_name = "APP")]
    pub app: String,
    /// The stream whose leases to reset.
    #[arg(long, value_name = "NAME")]
    pub stream: String,
    /// The new checkpoint: trim-horizon, latest, timestamp:RFC3339 (the first record that
    /// arrived at or after it) or sequence:N (resume AFTER record N, as if N was the last one
    /// processed; sequence:N/S after user record S of a KPL aggregate).
    #[arg(long, value_name = "POSITION")]
    pub to: StartAt,
    /// A shard to reset (repeatable).
    #[arg(long = "shard", value_name = "ID")]
    pub shards: Vec<String>,
    /// Reset every unfinished lease of the stream.
    #[arg(long, conflicts_with = "shards")]
    pub all: bool,
    /// Take over shards whose owner is still registered (the owner loses the lease).
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

/// What will happen to one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// `reset_checkpoint` on an unowned lease.
    Reset,
    /// `take` from an owner, then `release` with the new checkpoint.
    TakeOver,
    /// Nothing: refused, with the reason.
    Refuse(String),
    /// Nothing, and not an error: a finished lease under `--all`.
    Skip(&'static str),
}

/// Runs `kinsumer reset`; an error (exit 2) is one readable line.
pub async fn run(args: ResetArgs) -> Result<i32> {
    execute(args)
        .await
        .map_err(|e| brief(&e.to_string()).into())
}

async fn execute(args: ResetArgs) -> Result<i32> {
    if args.to.is_sequence() && (args.all || args.shards.len() > 1) {
        return Err(
            "--to sequence:N names one record, which lives in one shard: use it with one --shard"
                .into(),
        );
    }
    if let StartAt::Timestamp(ms) = args.to {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if ms > now_ms {
            // Kinesis refuses to read from a time it has not reached: every consumer would
            // set the shard aside until the next reset.
            return Err(format!(
                "--to timestamp:{} is in the future (now is {}): no record arrived then yet; \
                 use latest to skip what is there now",
                format_rfc3339(ms),
                format_rfc3339(now_ms)
            )
            .into());
        }
    }
    let store = open_store(&args.store, &args.app, Access::Existing).await?;
    let read = store.leases(&args.stream).await?;
    let mut leases = read.rows;
    leases.sort_by(|a, b| a.shard.cmp(&b.shard));
    // A client row that does not decode is a registered client all the same (its next
    // heartbeat rewrites the row): never take its leases without --force.
    let clients = store.clients().await?;
    let registered: Vec<ClientId> = clients
        .rows
        .into_iter()
        .map(|c| c.id)
        .chain(
            clients
                .corrupt
                .into_iter()
                .filter_map(|r| r.id.map(ClientId::from)),
        )
        .collect();
    for bad in &read.corrupt {
        note!(
            "kinsumer: {} does not decode ({}); reset cannot move it",
            crate::tail::escape(&bad.key),
            crate::tail::escape(&bad.reason)
        );
    }

    let chosen = match choose(&leases, &args) {
        Ok(chosen) => chosen,
        Err(problem) => {
            note!("kinsumer: {problem}; nothing changed");
            return Ok(1);
        }
    };
    let target = args.to.checkpoint();
    let plan: Vec<(&Lease, Action)> = chosen
        .into_iter()
        .map(|lease| (lease, action(lease, &registered, args.all, args.force)))
        .collect();
    print_plan(&args, &plan, &target, &registered);

    let refused: Vec<String> = plan
        .iter()
        .filter_map(|(lease, action)| match action {
            Action::Refuse(why) => Some(format!("{}: {why}", lease.shard)),
            _ => None,
        })
        .collect();
    if !refused.is_empty() {
        for line in &refused {
            note!("kinsumer: refused: {line}");
        }
        note!("kinsumer: nothing changed");
        return Ok(1);
    }
    let work: Vec<&(&Lease, Action)> = plan
        .iter()
        .filter(|(_, a)| matches!(a, Action::Reset | Action::TakeOver))
        .collect();
    if work.is_empty() {
        say("nothing to reset\n");
        return Ok(0);
    }
    if !args.yes && !confirm(work.len())? {
        return Ok(1);
    }

    let me = ClientId::from(format!("kinsumer-cli-{}", std::process::id()));
    let mut failed = 0;
    for (lease, action) in work {
        let outcome = match action {
            Action::TakeOver => take_over(&*store, &args.stream, lease, &me, &target).await,
            _ => store
                .reset_checkpoint(&args.stream, &lease.shard, lease.token, &target)
                .await
                .map_err(|e| describe(&e, lease)),
        };
        match outcome {
            Ok(()) => say(&format!(
                "{}: checkpoint now {}\n",
                lease.shard,
                checkpoint_text(Some(&target))
            )),
            Err(why) => {
                failed += 1;
                say(&format!("{}: FAILED: {why}\n", lease.shard));
            }
        }
    }
    if failed > 0 {
        note!("kinsumer: {failed} shard(s) not reset (see above)");
        return Ok(1);
    }
    Ok(0)
}

/// The leases the flags name: every lease with `--all`, else each `--shard` (all must exist).
fn choose<'a>(
    leases: &'a [Lease],
    args: &ResetArgs,
) -> std::result::Result<Vec<&'a Lease>, String> {
    if args.all {
        if leases.is_empty() {
            return Err(format!(
                "application {} has no leases for stream {}",
                args.app, args.stream
            ));
        }
        return Ok(leases.iter().collect());
    }
    let mut chosen = Vec::new();
    for id in &args.shards {
        match leases.iter().find(|l| l.shard.as_str() == id) {
            Some(lease) if !chosen.contains(&lease) => chosen.push(lease),
            Some(_) => {}
            None => {
                let known: Vec<&str> = leases.iter().map(|l| l.shard.as_str()).collect();
                return Err(format!(
                    "no lease for shard {id} of stream {} in application {} (leases: {})",
                    args.stream,
                    args.app,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
    }
    Ok(chosen)
}

/// What to do with `lease`, given the registered clients and the flags.
fn action(lease: &Lease, registered: &[ClientId], all: bool, force: bool) -> Action {
    if lease.finished {
        return if all {
            Action::Skip("finished (read to its end): left as it is")
        } else {
            Action::Refuse(
                "the lease is finished (the shard was read to its end); a finished lease cannot be reset"
                    .to_owned(),
            )
        };
    }
    match &lease.owner {
        None => Action::Reset,
        Some(owner) if !registered.contains(owner) || force => Action::TakeOver,
        Some(owner) => Action::Refuse(format!(
            "owned by {owner}, which is registered (live, or not yet known to be dead); \
             stop it first, or pass --force to take the lease from it"
        )),
    }
}

fn print_plan(
    args: &ResetArgs,
    plan: &[(&Lease, Action)],
    target: &Checkpoint,
    registered: &[ClientId],
) {
    say(&format!(
        "reset of application {}, stream {} in {}:\n",
        args.app, args.stream, args.store
    ));
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|(lease, action)| {
            vec![
                lease.shard.to_string(),
                match &lease.owner {
                    None => "-".to_owned(),
                    Some(owner) if registered.contains(owner) => owner.to_string(),
                    Some(owner) => format!("{owner} (gone)"),
                },
                lease.token.to_string(),
                checkpoint_text(lease.checkpoint.as_ref()),
                match action {
                    Action::Refuse(_) | Action::Skip(_) => "-".to_owned(),
                    _ => checkpoint_text(Some(target)),
                },
                match action {
                    Action::Reset => "reset (unowned)".to_owned(),
                    Action::TakeOver => "take over, then release at the new checkpoint".to_owned(),
                    Action::Refuse(_) => "REFUSED".to_owned(),
                    Action::Skip(why) => format!("skip: {why}"),
                },
            ]
        })
        .collect();
    say(&table(
        &[
            "SHARD",
            "OWNER",
            "TOKEN",
            "CHECKPOINT",
            "NEW CHECKPOINT",
            "ACTION",
        ],
        &rows,
    ));
}

/// Prints to stdout; a closed stdout does not stop a reset half-way (nor panic, as `print!`
/// would).
fn say(text: &str) {
    let _ = emit(text);
}

/// Asks on the terminal; `Ok(false)` (after saying why) when not confirmed.
fn confirm(changes: usize) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        note!(
            "kinsumer: stdin is not a terminal, so nobody can confirm: pass --yes to apply; nothing changed"
        );
        return Ok(false);
    }
    note_inline!("apply {changes} change(s)? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        Ok(true)
    } else {
        note!("kinsumer: not confirmed; nothing changed");
        Ok(false)
    }
}

/// Takes `lease` from its owner as `me`, then releases it at `target`.
async fn take_over(
    store: &dyn LeaseStore,
    stream: &str,
    lease: &Lease,
    me: &ClientId,
    target: &Checkpoint,
) -> std::result::Result<(), String> {
    let taken = store
        .take(stream, &lease.shard, me, lease.token)
        .await
        .map_err(|e| describe(&e, lease))?;
    let Some(tenure) = taken.tenure() else {
        return Err("the store returned an unowned lease after a take".to_owned());
    };
    store
        .release(stream, &tenure, Some(target), None)
        .await
        .map_err(|e| {
            format!(
                "took the lease (token {}) but could not release it: {e}; it stays with {me}, \
                 which has no client row, so the consumers will take it back (the checkpoint \
                 is unchanged)",
                tenure.token
            )
        })
}

fn describe(error: &StoreError, lease: &Lease) -> String {
    match error {
        StoreError::LeaseLost { .. } => format!(
            "the lease changed since it was read (token {} is no longer current: taken, \
             released or finished meanwhile); nothing written — run the reset again",
            lease.token
        ),
        StoreError::NotFound { .. } => "the lease was deleted meanwhile".to_owned(),
        other => brief(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinsumer::ShardId;

    fn lease(owner: Option<&str>, finished: bool) -> Lease {
        Lease {
            owner: owner.map(ClientId::from),
            finished,
            ..Lease::new(ShardId::from("s"), vec![])
        }
    }

    #[test]
    fn owners_that_are_registered_need_force() {
        let registered = [ClientId::from("a")];
        assert_eq!(
            action(&lease(None, false), &registered, false, false),
            Action::Reset
        );
        assert!(matches!(
            action(&lease(Some("a"), false), &registered, false, false),
            Action::Refuse(why) if why.contains("owned by a") && why.contains("--force")
        ));
        assert_eq!(
            action(&lease(Some("a"), false), &registered, false, true),
            Action::TakeOver
        );
        // An owner without a client row has left: no --force needed.
        assert_eq!(
            action(&lease(Some("gone"), false), &registered, false, false),
            Action::TakeOver
        );
    }

    #[test]
    fn finished_leases_are_refused_by_name_and_skipped_by_all() {
        assert!(matches!(
            action(&lease(None, true), &[], false, true),
            Action::Refuse(why) if why.contains("finished")
        ));
        assert!(matches!(
            action(&lease(None, true), &[], true, true),
            Action::Skip(_)
        ));
    }
}
