//! `kinsumer reset`: move checkpoints, through the store's fenced operations only — and
//! repair lease rows that do not decode.
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
//! - a row that **does not decode** (consumers set it aside and never read its shard) is
//!   rewritten whole by `replace_corrupt`, which writes only while the stored row still does
//!   not decode — never over a row repaired or re-created meanwhile: unowned, at the new
//!   checkpoint, unfinished, with a token above any the row held ([`repair_token`]) and the
//!   shard's parents from `--source`'s listing. Without `--source` the repair is refused: the
//!   row can no longer tell its parents, and a child written without them would be read
//!   before its parents end.
//! - a lease whose **token is exhausted** ([`Lease::token_exhausted`]: no take can move it
//!   again) is rewritten the same way, with the parents its row still holds (no `--source`),
//!   and from a registered owner only with `--force`.
//!
//! With `--source`, `--to sequence:N[/S]` is checked against the shard before anything is
//! written ([`crate::sequence`]): a number the shard does not hold — past its tip, trimmed,
//! another shard's — is refused. Without it, a note says the position was not checked.
//!
//! Nothing is written when any chosen shard is refused (owned without `--force`, finished, a
//! row that does not decode without `--source`, a sequence number the shard does not hold),
//! when a shard has no lease, or when the confirmation is not given. A lost race (`LeaseLost`)
//! is reported per shard; the other shards are still reset. Exit codes: 0 every shard reset,
//! 1 refused or a shard failed, 2 bad usage or an unreachable store or source.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use kinsumer::{
    Checkpoint, ClientId, CorruptRow, Lease, LeaseStore, ShardId, ShardInfo, ShardSource,
    StoreError,
};

use crate::Result;
use crate::backends::{
    Access, SourceUrl, StartAt, StoreUrl, brief, checkpoint_text, format_rfc3339, open_source,
    open_store,
};
use crate::sequence::{self, Verdict};
use crate::status::{emit, table};
use crate::tail::escape;

/// Examples and exit codes at the end of `kinsumer reset --help`.
const AFTER_HELP: &str = "\
Examples:
  kinsumer reset --store redis://127.0.0.1:6379 --app billing --stream orders --all --to trim-horizon
  kinsumer reset --store postgres://user:pass@db:5432/kinsumer --app billing --stream orders \\
      --shard shardId-000000000001 --to timestamp:2026-11-26T07:00:00Z --yes
  kinsumer reset --store 'dynamodb://leases?region=eu-west-1' --app billing --stream orders \\
      --source 'kinesis://orders?region=eu-west-1' --shard shardId-000000000001 \\
      --to sequence:49590338271490256608559692538361571095921575989136588898 --force

Positions: trim-horizon (the oldest retained record), latest (records written after the next
reader opens), timestamp:RFC3339 (the first record that arrived at or after it, e.g.
2026-11-26T08:00:00.250+01:00), sequence:N (resume AFTER record N, as if it was the last one
processed; sequence:N/S after user record S of a KPL aggregate). With --source, a sequence
number is checked first: one the shard does not hold (past its tip, trimmed, another shard's)
is refused.

The plan is printed first; on a terminal you are asked to confirm, otherwise pass --yes. A shard
owned by a registered client (live, or not yet known to be dead) is refused unless --force: then
the lease is taken from its owner and released at the new checkpoint, and the owner's next
checkpoint fails (it lets go; records it delivered meanwhile may come again).

A lease row that does not decode (kinsumer status lists it under PROBLEM) is repaired: rewritten
whole, unowned, at the new checkpoint, with a fencing token above any it held (the current time
in ms) and the shard's parents from the stream's listing, so --source is required for it. The
write happens only while the row still does not decode: a row repaired meanwhile is left alone.
A lease whose token is exhausted (at or past 2^63 - 1: no take can move it again) is repaired the
same way, with the parents its row holds (no --source needed; --force if its owner is registered).

Exit codes: 0 every chosen shard reset or repaired; 1 refused, not confirmed, or a shard failed
(e.g. its lease changed meanwhile); 2 bad usage or an unreachable store or source.";

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
    /// The stream as a source (kinesis://STREAM?region=R[&endpoint=URL]): needed to repair a
    /// row that does not decode (the listing gives the shard's parents), and checks that a
    /// --to sequence:N is a record the shard holds.
    #[arg(long, value_name = "URL")]
    pub source: Option<SourceUrl>,
    /// The new checkpoint: trim-horizon, latest, timestamp:RFC3339 (the first record that
    /// arrived at or after it) or sequence:N (resume AFTER record N, as if N was the last one
    /// processed; sequence:N/S after user record S of a KPL aggregate).
    #[arg(long, value_name = "POSITION")]
    pub to: StartAt,
    /// A shard to reset or repair (repeatable).
    #[arg(long = "shard", value_name = "ID")]
    pub shards: Vec<String>,
    /// Reset every unfinished lease of the stream, and repair every row that does not decode.
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
    /// `replace_corrupt` of a row that does not decode, with this row.
    Repair(Lease),
    /// Nothing: refused, with the reason.
    Refuse(String),
    /// Nothing, and not an error: a finished lease under `--all`.
    Skip(&'static str),
}

/// A chosen row, as read.
#[derive(Debug, Clone, Copy)]
enum Row<'a> {
    Healthy(&'a Lease),
    Corrupt(&'a CorruptRow),
}

impl Row<'_> {
    fn shard(&self) -> &str {
        match self {
            Row::Healthy(lease) => lease.shard.as_str(),
            // Only rows whose shard id could be read are ever chosen.
            Row::Corrupt(bad) => bad.id.as_deref().unwrap_or(""),
        }
    }
}

/// How long listing the source's shards may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(20);

/// The earliest time this host's clock may show for a repair (2025-01-01T00:00:00Z): a clock
/// before it is wrong, and its time would make a token too small (see [`repair_token`]).
const SANE_CLOCK_MS: u64 = 1_735_689_600_000;

/// Runs `kinsumer reset`; an error (exit 2) is one readable line.
pub async fn run(args: ResetArgs) -> Result<i32> {
    execute(args)
        .await
        .map_err(|e| brief(&e.to_string()).into())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The fencing token of a repaired row: the current Unix time in milliseconds.
///
/// The row's own token cannot be read, and the new one must be larger than any it held: a
/// token must never become current again for a client that held it before (its late writes
/// would pass the fence). A token grows by one per take, and takes of one lease are at least a
/// store round trip apart, so no row reaches the number of milliseconds since 1970 (1.7·10¹²
/// in 2025: 55 years of 1,000 takes a second) — and after an earlier repair, it would need a
/// take per millisecond ever since to catch up with the clock. It stays far below the largest
/// token any store holds (2⁶³ − 1 in PostgreSQL), leaving room for every take to come. This
/// holds as long as the clock of the host that repairs is not behind that of an earlier repair
/// of the same row; a clock before 2025 is refused.
fn repair_token(now_ms: u64) -> std::result::Result<u64, String> {
    if now_ms < SANE_CLOCK_MS {
        return Err(format!(
            "this host's clock reads {}: a repaired row's fencing token is the current time in \
             ms, so the clock must be right (set it, or repair from another host)",
            format_rfc3339(now_ms)
        ));
    }
    Ok(now_ms)
}

async fn execute(args: ResetArgs) -> Result<i32> {
    if args.to.is_sequence() && (args.all || args.shards.len() > 1) {
        return Err(
            "--to sequence:N names one record, which lives in one shard: use it with one --shard"
                .into(),
        );
    }
    if let Some(url) = &args.source
        && url.stream_name() != args.stream
    {
        return Err(format!(
            "--source names stream {}, but --stream is {}: they must be the same stream",
            url.stream_name(),
            args.stream
        )
        .into());
    }
    if let StartAt::Timestamp(ms) = args.to {
        let now_ms = now_ms();
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
    let corrupt = read.corrupt;
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
    let listing = match &args.source {
        Some(url) => Some(list_shards(url).await?),
        None => None,
    };

    let chosen = match choose(&leases, &corrupt, &args) {
        Ok(chosen) => chosen,
        Err(problem) => {
            note!("kinsumer: {problem}; nothing changed");
            return Ok(1);
        }
    };
    let target = args.to.checkpoint();
    let mut plan: Vec<(Row, Action)> = Vec::new();
    for row in chosen {
        let action = match row {
            Row::Healthy(lease) if lease.token_exhausted() && !lease.finished => exhausted_action(
                lease,
                &registered,
                args.force,
                &target,
                repair_token(now_ms())?,
            ),
            Row::Healthy(lease) => action(lease, &registered, args.all, args.force),
            Row::Corrupt(bad) => {
                let token = repair_token(now_ms())?;
                repair_action(bad, &args.stream, listing.as_deref(), &target, token)
            }
        };
        plan.push((row, action));
    }
    if let StartAt::After(position) = &args.to {
        check_sequence(&args, listing.as_deref(), position, &mut plan).await?;
    }
    print_plan(&args, &plan, &target, &registered);

    let refused: Vec<String> = plan
        .iter()
        .filter_map(|(row, action)| match action {
            Action::Refuse(why) => Some(format!("{}: {}", escape(row.shard()), escape(why))),
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
    let work: Vec<&(Row, Action)> = plan
        .iter()
        .filter(|(_, a)| matches!(a, Action::Reset | Action::TakeOver | Action::Repair(_)))
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
    let total = work.len();
    for (row, action) in work {
        let outcome = match (row, action) {
            (_, Action::Repair(new)) => store
                .replace_corrupt(&args.stream, new)
                .await
                .map_err(|e| describe_repair(&e)),
            (Row::Healthy(lease), Action::TakeOver) => {
                take_over(&*store, &args.stream, lease, &me, &target).await
            }
            (Row::Healthy(lease), _) => store
                .reset_checkpoint(&args.stream, &lease.shard, lease.token, &target)
                .await
                .map_err(|e| describe(&e, lease)),
            (Row::Corrupt(_), _) => Err("nothing planned for a row that does not decode".into()),
        };
        match outcome {
            Ok(()) => say(&format!(
                "{}: {} now {}\n",
                escape(row.shard()),
                if matches!(action, Action::Repair(_)) {
                    "repaired; checkpoint"
                } else {
                    "checkpoint"
                },
                checkpoint_text(Some(&target))
            )),
            Err(why) => {
                failed += 1;
                say(&format!("{}: FAILED: {why}\n", escape(row.shard())));
            }
        }
    }
    // Running consumers read every row only when the change counter moves (or at their rare
    // safety-net read): tell them.
    if failed < total
        && let Err(e) = store.announce().await
    {
        note!(
            "kinsumer: could not announce the change ({e}); running consumers see it at their \
             next safety-net read of every lease"
        );
    }
    if failed > 0 {
        note!("kinsumer: {failed} shard(s) not reset (see above)");
        return Ok(1);
    }
    Ok(0)
}

/// The shards of `url`'s stream, with their parents.
async fn list_shards(url: &SourceUrl) -> Result<Vec<ShardInfo>> {
    let source = open_source(url).await?;
    match tokio::time::timeout(LIST_TIMEOUT, source.list_shards()).await {
        Ok(Ok(shards)) => Ok(shards),
        Ok(Err(e)) => Err(format!(
            "cannot list the shards of --source stream {}: {e}",
            url.stream_name()
        )
        .into()),
        Err(_) => Err(format!(
            "listing the shards of --source stream {} took longer than {} s",
            url.stream_name(),
            LIST_TIMEOUT.as_secs()
        )
        .into()),
    }
}

/// With `--source`, checks that the one shard a `--to sequence:N` is for holds record N, and
/// refuses it in `plan` when it does not; without, says the position was not checked.
async fn check_sequence(
    args: &ResetArgs,
    listing: Option<&[ShardInfo]>,
    position: &kinsumer::Position,
    plan: &mut [(Row<'_>, Action)],
) -> Result<()> {
    for (row, action) in plan.iter_mut() {
        if matches!(action, Action::Refuse(_) | Action::Skip(_)) {
            continue;
        }
        let shard = ShardId::from(row.shard());
        let (Some(url), Some(listing)) = (&args.source, listing) else {
            note!(
                "kinsumer: note: sequence {} was not checked against the stream (pass --source \
                 kinesis://{}?… to check that shard {shard} holds it)",
                position.sequence,
                args.stream
            );
            continue;
        };
        if !listing.iter().any(|s| s.id == shard) {
            *action = Action::Refuse(format!(
                "shard {shard} is not in stream {}'s listing, so sequence {} cannot be checked \
                 (the shard left the stream)",
                args.stream, position.sequence
            ));
            continue;
        }
        match sequence::check(url, &shard, position).await {
            Ok(Verdict::Held) => {}
            Ok(Verdict::NotHeld(why)) => *action = Action::Refuse(why),
            Err(e) => return Err(format!("checking sequence {}: {e}", position.sequence).into()),
        }
    }
    Ok(())
}

/// The rows the flags name: every row with `--all` (those that do not decode included, if
/// their shard id could be read), else each `--shard` (all must exist).
fn choose<'a>(
    leases: &'a [Lease],
    corrupt: &'a [CorruptRow],
    args: &ResetArgs,
) -> std::result::Result<Vec<Row<'a>>, String> {
    let repairable = |bad: &&CorruptRow| bad.id.is_some();
    if args.all {
        for bad in corrupt.iter().filter(|b| b.id.is_none()) {
            note!(
                "kinsumer: {} does not decode ({}) and its shard id cannot be read: reset \
                 cannot repair it; delete it in the store's console",
                escape(&bad.key),
                escape(&bad.reason)
            );
        }
        if leases.is_empty() && !corrupt.iter().any(|b| repairable(&b)) {
            return Err(format!(
                "application {} has no leases for stream {}",
                args.app, args.stream
            ));
        }
        let mut rows: Vec<Row> = leases.iter().map(Row::Healthy).collect();
        rows.extend(corrupt.iter().filter(repairable).map(Row::Corrupt));
        rows.sort_by(|a, b| a.shard().cmp(b.shard()));
        return Ok(rows);
    }
    let mut chosen: Vec<Row> = Vec::new();
    for id in &args.shards {
        if chosen.iter().any(|row| row.shard() == id) {
            continue;
        }
        if let Some(lease) = leases.iter().find(|l| l.shard.as_str() == id) {
            chosen.push(Row::Healthy(lease));
        } else if let Some(bad) = corrupt.iter().find(|b| b.id.as_deref() == Some(id)) {
            chosen.push(Row::Corrupt(bad));
        } else {
            let known: Vec<&str> = leases.iter().map(|l| l.shard.as_str()).collect();
            let bad: Vec<String> = corrupt
                .iter()
                .filter_map(|b| b.id.as_deref().map(escape))
                .collect();
            return Err(format!(
                "no lease for shard {} of stream {} in application {} (leases: {}{})",
                escape(id),
                args.stream,
                args.app,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
                if bad.is_empty() {
                    String::new()
                } else {
                    format!("; rows that do not decode: {}", bad.join(", "))
                }
            ));
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

/// What to do with a lease whose token no take can move again: rewrite it with a token of
/// the repair's (the row's parents are known), taking it from a registered owner only with
/// `--force`, as a take-over would.
fn exhausted_action(
    lease: &Lease,
    registered: &[ClientId],
    force: bool,
    target: &Checkpoint,
    token: u64,
) -> Action {
    if let Some(owner) = lease
        .owner
        .as_ref()
        .filter(|o| registered.contains(o) && !force)
    {
        return Action::Refuse(format!(
            "its token {} can never be taken again, and it is owned by {owner}, which is \
             registered (live, or not yet known to be dead); stop it first, or pass --force",
            lease.token
        ));
    }
    Action::Repair(Lease {
        token,
        checkpoint: Some(target.clone()),
        ..Lease::new(lease.shard.clone(), lease.parents.clone())
    })
}

/// What to do with a row that does not decode: rewrite it whole with the parents the stream
/// lists — or refuse, when there is no listing to take them from. Nobody reads a shard whose
/// row does not decode, so no owner needs `--force`.
fn repair_action(
    bad: &CorruptRow,
    stream: &str,
    listing: Option<&[ShardInfo]>,
    target: &Checkpoint,
    token: u64,
) -> Action {
    let shard = bad.id.as_deref().unwrap_or("");
    let Some(listing) = listing else {
        return Action::Refuse(format!(
            "the row does not decode ({}); repairing it needs --source kinesis://{stream}?…: \
             the row can no longer tell the shard's parents, and the stream's listing does",
            bad.reason
        ));
    };
    let Some(info) = listing.iter().find(|s| s.id.as_str() == shard) else {
        return Action::Refuse(format!(
            "the row does not decode ({}), and shard {shard} is not in the --source stream's \
             listing (it left the stream, or the stream is another one): its parents cannot be \
             known, so reset cannot repair it",
            bad.reason
        ));
    };
    Action::Repair(Lease {
        token,
        checkpoint: Some(target.clone()),
        ..Lease::new(info.id.clone(), info.parents.clone())
    })
}

fn print_plan(
    args: &ResetArgs,
    plan: &[(Row, Action)],
    target: &Checkpoint,
    registered: &[ClientId],
) {
    say(&format!(
        "reset of application {}, stream {} in {}:\n",
        args.app, args.stream, args.store
    ));
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|(row, action)| {
            let (owner, token, checkpoint) = match row {
                Row::Healthy(lease) => (
                    match &lease.owner {
                        None => "-".to_owned(),
                        Some(owner) if registered.contains(owner) => owner.to_string(),
                        Some(owner) => format!("{owner} (gone)"),
                    },
                    lease.token.to_string(),
                    checkpoint_text(lease.checkpoint.as_ref()),
                ),
                Row::Corrupt(_) => (
                    "?".to_owned(),
                    "?".to_owned(),
                    "? (does not decode)".to_owned(),
                ),
            };
            vec![
                row.shard().to_owned(),
                owner,
                token,
                checkpoint,
                match action {
                    Action::Refuse(_) | Action::Skip(_) => "-".to_owned(),
                    _ => checkpoint_text(Some(target)),
                },
                match action {
                    Action::Reset => "reset (unowned)".to_owned(),
                    Action::TakeOver => "take over, then release at the new checkpoint".to_owned(),
                    Action::Repair(new) => format!(
                        "repair: rewrite the row, unowned, token {}, {}",
                        new.token,
                        if new.parents.is_empty() {
                            "no parents".to_owned()
                        } else {
                            format!(
                                "parents {}",
                                new.parents
                                    .iter()
                                    .map(ShardId::as_str)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    ),
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
    for (row, action) in plan {
        match (row, action) {
            (Row::Corrupt(bad), _) => say(&format!(
                "{} does not decode: {} ({})\n",
                escape(row.shard()),
                escape(&bad.reason),
                escape(&bad.key)
            )),
            (Row::Healthy(lease), Action::Repair(_)) => say(&format!(
                "{}: token {} is exhausted: no take can move the lease again\n",
                escape(row.shard()),
                lease.token
            )),
            _ => {}
        }
    }
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

fn describe_repair(error: &StoreError) -> String {
    match error {
        StoreError::LeaseLost { .. } => "the row decodes now (repaired meanwhile, by someone \
             else or by hand): nothing written — run kinsumer status to see it as it is"
            .to_owned(),
        StoreError::NotFound { .. } => "the row was deleted meanwhile: nothing written".to_owned(),
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

    fn bad(id: &str) -> CorruptRow {
        CorruptRow {
            key: format!("leases {id}"),
            id: Some(id.to_owned()),
            reason: "token \"01\" is not canonical".to_owned(),
        }
    }

    fn info(id: &str, parents: &[&str]) -> ShardInfo {
        ShardInfo {
            id: ShardId::from(id),
            parents: parents.iter().map(|p| ShardId::from(*p)).collect(),
            hash_range: kinsumer::HashRange::FULL,
            open: true,
        }
    }

    #[test]
    fn a_row_that_does_not_decode_is_repaired_only_with_the_listing() {
        let target = Checkpoint::TrimHorizon;
        let without = repair_action(&bad("c"), "s", None, &target, SANE_CLOCK_MS);
        assert!(
            matches!(&without, Action::Refuse(why) if why.contains("--source") && why.contains("canonical")),
            "{without:?}"
        );
        let listing = [info("p", &[]), info("c", &["p"])];
        let gone = repair_action(&bad("x"), "s", Some(&listing), &target, SANE_CLOCK_MS);
        assert!(
            matches!(&gone, Action::Refuse(why) if why.contains("not in the --source stream")),
            "{gone:?}"
        );
        let repair = repair_action(&bad("c"), "s", Some(&listing), &target, SANE_CLOCK_MS + 7);
        assert_eq!(
            repair,
            Action::Repair(Lease {
                token: SANE_CLOCK_MS + 7,
                checkpoint: Some(Checkpoint::TrimHorizon),
                ..Lease::new(ShardId::from("c"), vec![ShardId::from("p")])
            })
        );
    }

    #[test]
    fn a_repair_token_is_the_time_and_needs_a_sane_clock() {
        assert_eq!(repair_token(1_795_676_400_000), Ok(1_795_676_400_000));
        let err = repair_token(86_400_000).expect_err("1970 is no time to repair");
        assert!(err.contains("1970-01-02"), "{err}");
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
