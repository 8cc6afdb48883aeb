//! The operations commands (`status`, `reset`, `tail`) as the built binary, against the real
//! services of `scripts/services.sh`: stores seeded through the library (or by a consumer run on
//! kinesis-local), then read or changed by `kinsumer` and checked through the library again.
//! A test whose service is not running is skipped loudly, and fails under `CI=true`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kinsumer::dynamo::{DynamoConfig, DynamoLeaseStore};
use kinsumer::kinesis::KinesisSource;
use kinsumer::postgres::{PgLeaseStore, PgStoreConfig};
use kinsumer::redis::RedisLeaseStore;
use kinsumer::{Checkpoint, ClientId, Consumer, LeaseStore, Position, SequenceNumber, ShardId};
use kinsumer_test_env::kinesis_local::{self, TestStream, unique_name};
use kinsumer_test_env::moto;
use kinsumer_test_env::services::{clear, postgres_url, redis_url};
use kinsumer_testkit::conformance::fleet_config;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Running the binary.

/// What one run of `kinsumer` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{self:?}"))
    }
}

/// Runs `kinsumer ARGS` with stdin closed (not a terminal) and dummy AWS credentials.
async fn kinsumer(args: &[impl AsRef<str>]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.as_ref().to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_kinsumer"))
            .args(&args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .expect("the run finishes")
}

/// `line` split at white space: the arguments of a command line without quoted spaces.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Runs `kinsumer` with the arguments of `line` (see [`words`]).
async fn kinsumer_line(line: String) -> Run {
    kinsumer(&words(&line)).await
}

/// A PostgreSQL store at `pg` for a fresh application named from `prefix`: the name and the
/// store.
async fn pg_store_for(pg: &str, prefix: &str) -> (String, PgLeaseStore) {
    let app = unique_name(prefix);
    let store = PgLeaseStore::connect(PgStoreConfig::new(pg, &app))
        .await
        .expect("PostgreSQL");
    (app, store)
}

/// `text` when `on`, else nothing: an optional flag in a command line.
fn flag(on: bool, text: &str) -> &str {
    if on { text } else { "" }
}

/// The store's URL, kinesis-local's endpoint, a new stream of `shards` shards named from
/// `prefix` and its open shards (id, first and last hash key); `None` as [`with_kinesis`].
async fn with_stream(
    store_url: Option<String>,
    prefix: &str,
    shards: i32,
) -> Option<(String, String, TestStream, Vec<(String, u128, u128)>)> {
    let (store_url, endpoint) = with_kinesis(store_url)?;
    let stream = TestStream::create(&kinesis_local::client(&endpoint), prefix, shards).await;
    let open = stream.open_shards().await;
    Some((store_url, endpoint, stream, open))
}

/// The store's URL and kinesis-local's endpoint, or `None` (skipped loudly, or a failure under
/// `CI=true`) when either service is missing.
fn with_kinesis(store_url: Option<String>) -> Option<(String, String)> {
    let store_url = store_url?;
    Some((store_url, kinesis_local::endpoint()?))
}

fn after(sequence: &str) -> Checkpoint {
    Checkpoint::After(Position::new(sequence.parse().expect("a sequence"), 0))
}

/// Creates the row of `shard` (if absent) and takes it for `owner`: its tenure.
async fn create_and_take(
    store: &dyn LeaseStore,
    stream: &str,
    shard: &ShardId,
    owner: &str,
) -> kinsumer::Tenure {
    store
        .create_if_absent(stream, shard, &[])
        .await
        .expect("create");
    store
        .take(stream, shard, &ClientId::from(owner), 0)
        .await
        .expect("take")
        .tenure()
        .expect("owned")
}

/// Keeps `client`'s heartbeat going every 200 ms until dropped: a live consumer, as far as the
/// store can tell.
struct Beating(tokio::task::JoinHandle<()>);

impl Beating {
    fn start(store: Arc<dyn LeaseStore>, client: &str) -> Self {
        let client = ClientId::from(client);
        Self(tokio::spawn(async move {
            // A new value each time, as the engine writes them: what status sees change.
            for beat in 1u64.. {
                let _ = store.heartbeat(&client, beat).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }))
    }
}

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Seeds `stream`: `s-0` owned by `live` (heartbeating) and checkpointed after 100, `s-1`
/// owned by `gone` (no client row), `s-2` unowned without a checkpoint, `s-3` finished, `s-4`
/// released by `old` to `heir`.
async fn seed(store: &Arc<dyn LeaseStore>, stream: &str) -> Beating {
    let beating = Beating::start(store.clone(), "live");
    store
        .create_if_absent(stream, &ShardId::from("s-2"), &[])
        .await
        .expect("create");
    let take = |shard: &'static str, owner: &'static str| async move {
        create_and_take(&**store, stream, &ShardId::from(shard), owner).await
    };
    let s0 = take("s-0", "live").await;
    store
        .checkpoint(stream, &s0, &after("100"))
        .await
        .expect("checkpoint");
    take("s-1", "gone").await;
    let s3 = take("s-3", "live").await;
    store.finish(stream, &s3).await.expect("finish");
    let s4 = take("s-4", "old").await;
    store
        .release(stream, &s4, None, Some(&ClientId::from("heir")))
        .await
        .expect("release");
    // The heartbeat task has written the live client's row by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    beating
}

/// The stream [`seeded_redis`] seeds.
const SEEDED: &str = "orders";

/// A Redis store of a new application (named from `prefix`), seeded as [`seed`] does in the
/// stream [`SEEDED`]: its URL, the application, the store and the live client's heartbeat.
async fn seeded_redis(prefix: &str) -> Option<(String, String, Arc<dyn LeaseStore>, Beating)> {
    let url = redis_url()?;
    let app = unique_name(prefix);
    let store: Arc<dyn LeaseStore> =
        Arc::new(RedisLeaseStore::connect(&url, &app).await.expect("Redis"));
    let beating = seed(&store, SEEDED).await;
    Some((url, app, store, beating))
}

fn shard<'a>(report: &'a Value, stream: &str, shard: &str) -> &'a Value {
    report["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stream"] == stream))
        .and_then(|s| s["shards"].as_array())
        .and_then(|s| s.iter().find(|s| s["shard"] == shard))
        .unwrap_or_else(|| panic!("no shard {shard} of {stream} in {report}"))
}

/// Checks `status --json` and the table on a store seeded by [`seed`].
async fn assert_seeded_status(store_url: &str, app: &str, stream: &str) {
    let run = kinsumer(&[
        "status", "--store", store_url, "--app", app, "--stream", stream, "--json", "--sample", "2",
    ])
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    assert_eq!(report["application"], app);
    let clients = report["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 1, "{report}");
    assert_eq!(clients[0]["id"], "live");
    assert!(
        clients[0]["heartbeat_age_ms"].is_u64(),
        "the live client's heartbeat was seen to change: {report}"
    );
    assert!(
        clients[0]["watched_ms"]
            .as_u64()
            .is_some_and(|w| w >= 2_000),
        "watched for --sample after the first read: {report}"
    );
    assert_eq!(
        clients[0]["leases"], 2,
        "s-0 and the finished s-3: {report}"
    );

    let s0 = shard(&report, stream, "s-0");
    assert_eq!(
        (&s0["owner"], &s0["owner_has_client_row"], &s0["token"]),
        (&Value::from("live"), &Value::from(true), &Value::from(1))
    );
    assert_eq!(s0["checkpoint"], "AFTER:100/0");
    assert_eq!(s0["finished"], false);
    let s1 = shard(&report, stream, "s-1");
    assert_eq!(s1["owner"], "gone");
    assert_eq!(s1["owner_has_client_row"], false);
    assert_eq!(s1["checkpoint"], Value::Null);
    let s2 = shard(&report, stream, "s-2");
    assert_eq!(
        (&s2["owner"], &s2["token"]),
        (&Value::Null, &Value::from(0))
    );
    assert_eq!(shard(&report, stream, "s-3")["finished"], true);
    let s4 = shard(&report, stream, "s-4");
    assert_eq!(
        (&s4["owner"], &s4["successor"]),
        (&Value::Null, &Value::from("heir"))
    );
    assert_eq!(s0["successor"], Value::Null);
    assert_eq!(shard(&report, stream, "s-3")["checkpoint"], "SHARD_END");

    let table = kinsumer(&[
        "status", "--store", store_url, "--app", app, "--stream", stream, "--sample", "0.6",
    ])
    .await;
    assert_eq!(table.code, 0, "{table:?}");
    for expected in [
        "gone (gone)",
        "after 100",
        "shard end",
        "none yet",
        "s ago",
        "2 owned, 2 unowned, 1 finished",
        "- (to heir)",
    ] {
        assert!(
            table.stdout.contains(expected),
            "{expected:?} in\n{}",
            table.stdout
        );
    }
    assert!(
        !table.stdout.contains("postgres:postgres"),
        "no credentials in the output:\n{}",
        table.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// status

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_redis_shows_owners_checkpoints_and_gone_owners() {
    let Some((url, app, store, beating)) = seeded_redis("cli-status").await else {
        return;
    };
    let stream = SEEDED;
    assert_seeded_status(&url, &app, stream).await;
    drop(beating);
    clear(&*store, stream).await;
}

/// Rows that do not decode are shown as problems (store key and what is wrong, control
/// characters escaped), the good rows as usual, and the exit code says a problem was found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_rows_that_do_not_decode_and_exits_1() {
    let Some(url) = redis_url() else {
        return;
    };
    let app = unique_name("cli-corrupt");
    let stream = "orders";
    let redis_store = RedisLeaseStore::connect(&url, &app).await.expect("Redis");
    let (leases_key, clients_key) = (redis_store.leases_key(stream), redis_store.clients_key());
    let store: Arc<dyn LeaseStore> = Arc::new(redis_store);
    let beating = seed(&store, stream).await;
    let mut conn = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let _: () = redis::pipe()
        .hset(&leases_key, "s-bad", "\u{1b}[2J{\"token\":\"01\"}")
        .hset(&clients_key, "ghost", "lots")
        .query_async(&mut conn)
        .await
        .expect("hset");

    let run = kinsumer(&[
        "status", "--store", &url, "--app", &app, "--stream", stream, "--json", "--sample", "0.3",
    ])
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    let report = run.json();
    let corrupt = &report["streams"][0]["corrupt"];
    assert_eq!(corrupt[0]["key"], format!("{leases_key} s-bad"), "{report}");
    assert_eq!(corrupt[0]["id"], "s-bad");
    assert_eq!(report["corrupt_clients"][0]["id"], "ghost", "{report}");
    assert_eq!(
        report["streams"][0]["shards"].as_array().map(Vec::len),
        Some(5),
        "the good rows are all there: {report}"
    );

    let table = kinsumer(&[
        "status", "--store", &url, "--app", &app, "--stream", stream, "--sample", "0.3",
    ])
    .await;
    assert_eq!(table.code, 1, "{table:?}");
    assert!(
        table.stdout.contains("PROBLEM: 1 lease row"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("s-bad"), "{}", table.stdout);
    assert!(
        table.stdout.contains("PROBLEM: client rows"),
        "{}",
        table.stdout
    );
    assert!(
        !table.stdout.contains('\u{1b}'),
        "no control character reaches the terminal: {:?}",
        table.stdout
    );
    drop(beating);
    let _: () = redis::cmd("DEL")
        .arg(&leases_key)
        .arg(&clients_key)
        .query_async(&mut conn)
        .await
        .expect("del");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_dynamodb_shows_owners_checkpoints_and_gone_owners() {
    let Some(endpoint) = moto::endpoint() else {
        return;
    };
    let table = moto::unique_table("cli");
    let config = DynamoConfig::new("billing")
        .with_table(table.clone())
        .create_table_if_missing(true);
    let client = moto::client(&endpoint);
    let store: Arc<dyn LeaseStore> = Arc::new(
        DynamoLeaseStore::open(client.clone(), config)
            .await
            .expect("the table"),
    );
    let beating = seed(&store, "orders").await;
    let url = format!("dynamodb://{table}?endpoint={endpoint}&region=us-east-1");
    assert_seeded_status(&url, "billing", "orders").await;

    // reset --all on the same store: the unowned s-2 moves; the finished s-3 is skipped; the
    // live owner's s-0 refuses the whole reset until --force, the gone owner's s-1 is taken.
    let reset = [
        "reset",
        "--store",
        url.as_str(),
        "--app",
        "billing",
        "--stream",
        "orders",
        "--all",
        "--to",
        "timestamp:2026-11-26T08:00:00+01:00",
        "--yes",
    ];
    let refused = kinsumer(&reset).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("s-0: owned by live"), "{refused:?}");
    let mut force = reset.to_vec();
    force.push("--force");
    let forced = kinsumer(&force).await;
    assert_eq!(forced.code, 0, "{forced:?}");
    assert!(forced.stdout.contains("skip: finished"), "{forced:?}");
    let at = Checkpoint::AtTimestamp(1_795_676_400_000);
    for shard in ["s-0", "s-1", "s-2"] {
        let lease = store
            .lease("orders", &ShardId::from(shard))
            .await
            .expect("read")
            .expect("lease");
        assert_eq!(lease.checkpoint.as_ref(), Some(&at), "{shard}");
        assert_eq!(lease.owner, None, "{shard}");
    }
    drop(beating);
    moto::drop_table(&client, &table).await;
}

/// The scenario: two consumers read a kinesis-local stream with their leases in
/// PostgreSQL; `status --source` shows who owns which shard, the checkpoints they committed,
/// and the records they have not acknowledged as "behind the tip" — then, after they leave, no
/// clients, no owners and the same checkpoints.
/// `status` and `reset` never create or migrate: they work as a role that may only read, and a
/// schema name with a typo is an error saying so — not a new, empty schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_postgres_is_read_only() {
    let Some(pg) = postgres_url() else {
        return;
    };
    let suffix = unique_name("ro").replace('-', "_");
    let (schema, role) = (format!("kt_{suffix}"), format!("kinsumer_{suffix}"));
    let store = PgLeaseStore::connect(PgStoreConfig::new(&pg, "billing").with_schema(&schema))
        .await
        .expect("PostgreSQL");
    store
        .create_if_absent("orders", &ShardId::from("s-0"), &[])
        .await
        .expect("create");
    let admin = |sql: String| {
        let pool = store.pool().clone();
        async move {
            kinsumer::postgres::sqlx::query(kinsumer::postgres::sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("admin statement");
        }
    };
    admin(format!("CREATE ROLE {role} LOGIN PASSWORD 'ro-pass'")).await;
    admin(format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {role}")).await;
    admin(format!(
        "GRANT SELECT ON ALL TABLES IN SCHEMA \"{schema}\" TO {role}"
    ))
    .await;
    let host = pg
        .rsplit_once('@')
        .map_or("127.0.0.1:5432/postgres", |(_, h)| h);
    let host = host.split('?').next().unwrap_or(host);
    let as_reader = format!("postgres://{role}:ro-pass@{host}?schema={schema}");

    let run = kinsumer(&[
        "status", "--store", &as_reader, "--app", "billing", "--stream", "orders", "--sample", "0",
    ])
    .await;
    assert_eq!(
        run.code, 0,
        "a role that may only read sees the leases: {run:?}"
    );
    assert!(run.stdout.contains("s-0"), "{run:?}");
    assert!(!run.stdout.contains("ro-pass") && !run.stderr.contains("ro-pass"));

    let typo = format!("{schema}_typo");
    let run = kinsumer_line(format!(
        "status --store {pg}?schema={typo} --app billing --stream orders --sample 0"
    ))
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("no kinsumer tables"), "{run:?}");
    let created: Option<String> = kinsumer::postgres::sqlx::query_scalar(
        "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind(&typo)
    .fetch_optional(store.pool())
    .await
    .expect("query");
    assert_eq!(created, None, "status created nothing");

    admin(format!("DROP SCHEMA \"{schema}\" CASCADE")).await;
    admin(format!("DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_after_a_consumer_run_on_postgres_and_kinesis() {
    let Some((pg, endpoint)) = with_kinesis(postgres_url()) else {
        return;
    };
    let kinesis = kinesis_local::client(&endpoint);
    let stream = TestStream::create(&kinesis, "orders", 4).await;
    let (app, store) = pg_store_for(&pg, "billing").await;
    let source = KinesisSource::new(kinesis.clone(), &stream.name);

    // Deliveries: (shard, sequence, data); records of batch 2 are held, never acked.
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Arc::default();
    let held = Arc::new(Mutex::new(Vec::new()));
    let mut consumers = Vec::new();
    for id in ["worker-1", "worker-2"] {
        let mut consumer = Consumer::new(fleet_config(&app, id), source.clone(), store.clone())
            .expect("a consumer");
        let mut records = consumer.records().expect("records");
        let (seen, held) = (seen.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Some(Ok(record)) = records.next().await {
                let data = String::from_utf8_lossy(record.data()).into_owned();
                seen.lock().unwrap().push((
                    record.shard_id().to_string(),
                    record.sequence_number().to_string(),
                    data.clone(),
                ));
                if data.starts_with("batch-1") {
                    record.ack();
                } else {
                    held.lock().unwrap().push(record);
                }
            }
        });
        consumers.push((consumer, task));
    }

    let batch = |n: usize, count: usize| -> Vec<(String, Vec<u8>)> {
        (0..count)
            .map(|i| {
                (
                    format!("key-{i}"),
                    format!("batch-{n} record {i}").into_bytes(),
                )
            })
            .collect()
    };
    stream.put_all(&batch(1, 40)).await;
    // Batch 1 delivered, acked and committed, two shards per worker.
    let (seen_ref, held_ref, store_ref, name) = (&seen, &held, &store, stream.name.as_str());
    let last_of_batch_1 = wait_until(
        Duration::from_secs(60),
        "batch 1 committed",
        || async move {
            let seen = seen_ref.lock().unwrap().clone();
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            for (shard, seq, data) in &seen {
                if data.starts_with("batch-1") {
                    let entry = last.entry(shard.clone()).or_default();
                    let newer =
                        seq.parse::<SequenceNumber>().ok() > entry.parse::<SequenceNumber>().ok();
                    if newer {
                        *entry = seq.clone();
                    }
                }
            }
            let delivered: std::collections::BTreeSet<&String> =
                seen.iter().map(|d| &d.2).collect();
            let leases = store_ref.leases(name).await.ok()?.rows;
            let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
            for lease in &leases {
                *per_owner
                    .entry(lease.owner.as_ref()?.to_string())
                    .or_default() += 1;
                let expected = last.get(lease.shard.as_str()).map(|s| after(s));
                (lease.checkpoint == expected).then_some(())?;
            }
            let settled = delivered.len() == 40
                && leases.len() == 4
                && per_owner.values().all(|n| *n == 2)
                && per_owner.len() == 2;
            settled.then_some(last)
        },
    )
    .await;

    stream.put_all(&batch(2, 8)).await;
    wait_until(
        Duration::from_secs(30),
        "batch 2 delivered",
        || async move { (held_ref.lock().unwrap().len() == 8).then_some(()) },
    )
    .await;
    let mut batch_2_per_shard: BTreeMap<String, u64> = BTreeMap::new();
    for (shard, _, data) in seen.lock().unwrap().iter() {
        if data.starts_with("batch-2") {
            *batch_2_per_shard.entry(shard.clone()).or_default() += 1;
        }
    }

    let source_url = format!(
        "kinesis://{}?endpoint={endpoint}&region=us-east-1",
        stream.name
    );
    let status = |json: bool| {
        kinsumer_line(format!(
            "status --store {pg} --app {app} --source {source_url} --sample 1.5 {}",
            flag(json, "--json")
        ))
    };
    let table = status(false).await;
    eprintln!("kinsumer status, consumers running:\n{}", table.stdout);
    assert_eq!(table.code, 0, "{table:?}");
    let run = status(true).await;
    assert_eq!(run.code, 0, "{run:?}");
    let report = run.json();
    let clients: Vec<(&str, u64, bool)> = report["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap_or(""),
                c["leases"].as_u64().unwrap_or(0),
                c["heartbeat_age_ms"].is_u64(),
            )
        })
        .collect();
    assert_eq!(
        clients,
        [("worker-1", 2, true), ("worker-2", 2, true)],
        "{report}"
    );
    for (shard_id, last) in &last_of_batch_1 {
        let row = shard(&report, &stream.name, shard_id);
        assert!(
            row["owner"] == "worker-1" || row["owner"] == "worker-2",
            "{row}"
        );
        assert_eq!(row["owner_has_client_row"], true, "{row}");
        assert_eq!(row["checkpoint"], format!("AFTER:{last}/0"), "{row}");
        let behind = batch_2_per_shard.get(shard_id).copied().unwrap_or(0);
        assert_eq!(row["behind"]["records"], behind, "{row}");
        assert_eq!(row["behind"]["at_least"], false, "{row}");
        assert_eq!(row["in_stream"], true, "{row}");
        if behind > 0 {
            assert!(row["behind"]["oldest_unprocessed_age_ms"].is_u64(), "{row}");
        }
    }

    // Graceful leave: the held records are never acked, so the checkpoints stay.
    held.lock().unwrap().clear();
    let leaving = consumers.into_iter().map(|(consumer, task)| async move {
        consumer.shutdown().await.expect("shutdown");
        let _ = task.await;
    });
    futures::future::join_all(leaving).await;
    let report = status(true).await.json();
    assert_eq!(report["clients"], Value::Array(vec![]), "{report}");
    let mut behind_total = 0;
    for (shard_id, last) in &last_of_batch_1 {
        let row = shard(&report, &stream.name, shard_id);
        assert_eq!(row["owner"], Value::Null, "{row}");
        assert_eq!(row["checkpoint"], format!("AFTER:{last}/0"), "{row}");
        behind_total += row["behind"]["records"].as_u64().unwrap_or(0);
    }
    assert_eq!(behind_total, 8, "{report}");
    clear(&store, &stream.name).await;
}

/// A shard whose oldest unprocessed record arrived longer ago than `--stall-after` is flagged
/// (`behind.stalled`, `STALLED?`, a `PROBLEM:` line naming it and its owner, exit 1): its owner
/// heartbeats but does not move the checkpoint, as a hung application does. A shard read up to
/// its tip is not flagged, and a limit the records have not waited for flags nothing (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flags_shards_whose_records_wait_longer_than_stall_after() {
    let Some((url, endpoint, stream, open)) = with_stream(redis_url(), "stalls", 2).await else {
        return;
    };
    let name = stream.name.as_str();
    let put = |hash_key: u128| stream.put_at(hash_key, b"record");
    // `stuck` has 3 records after its checkpoint, `current` none: it was read to its tip.
    let (stuck, current) = (ShardId::from(open[0].0.as_str()), &open[1]);
    let current_id = ShardId::from(current.0.as_str());
    for _ in 0..3 {
        put(open[0].1).await;
    }
    let last_of_current = put(current.1).await;

    let app = unique_name("cli-stalls");
    let store: Arc<dyn LeaseStore> =
        Arc::new(RedisLeaseStore::connect(&url, &app).await.expect("Redis"));
    // A live client (its heartbeat goes on) that holds both shards.
    let beating = Beating::start(store.clone(), "hung");
    for (shard, checkpoint) in [
        (&stuck, Checkpoint::TrimHorizon),
        (&current_id, after(&last_of_current)),
    ] {
        let tenure = create_and_take(&*store, name, shard, "hung").await;
        store
            .checkpoint(name, &tenure, &checkpoint)
            .await
            .expect("checkpoint");
    }
    // The records wait longer than `--stall-after 1`.
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let source = format!("kinesis://{name}?endpoint={endpoint}&region=us-east-1");
    let status = |stall_after: Option<&str>, json: bool| {
        let stall_after = stall_after.map(|s| format!("--stall-after {s}"));
        kinsumer_line(format!(
            "status --store {url} --app {app} --source {source} --sample 0.5 {} {}",
            stall_after.unwrap_or_default(),
            flag(json, "--json")
        ))
    };
    // The table row of `shard`.
    let row = |table: &Run, shard: &ShardId| -> String {
        table
            .stdout
            .lines()
            .find(|l| l.starts_with(shard.as_str()))
            .unwrap_or_else(|| panic!("no row of {shard} in\n{}", table.stdout))
            .to_owned()
    };

    let run = status(Some("1"), true).await;
    assert_eq!(run.code, 1, "a stalled shard is a problem: {run:?}");
    let report = run.json();
    assert_eq!(report["stall_after_ms"], 1_000, "{report}");
    let behind = &shard(&report, name, stuck.as_str())["behind"];
    assert_eq!(
        (&behind["records"], &behind["stalled"]),
        (&Value::from(3), &Value::from(true)),
        "{report}"
    );
    assert!(
        behind["oldest_unprocessed_age_ms"]
            .as_u64()
            .is_some_and(|age| age > 1_000),
        "{report}"
    );
    let behind = &shard(&report, name, current_id.as_str())["behind"];
    assert_eq!(
        (&behind["records"], &behind["stalled"]),
        (&Value::from(0), &Value::from(false)),
        "nothing waits on a shard read to its tip: {report}"
    );
    let table = status(Some("1"), false).await;
    eprintln!("kinsumer status --stall-after 1:\n{}", table.stdout);
    assert_eq!(table.code, 1, "{table:?}");
    assert!(row(&table, &stuck).ends_with(" STALLED?"), "{table:?}");
    assert!(!row(&table, &current_id).contains("STALLED?"), "{table:?}");
    assert!(
        table.stdout.contains(&format!(
            "PROBLEM: 1 shard(s) whose oldest unprocessed record arrived more than 1.0s ago: \
             {stuck} (hung)."
        )) && table
            .stdout
            .contains("its application is hung or not polling"),
        "{}",
        table.stdout
    );

    for stall_after in [Some("3600"), None] {
        let run = status(stall_after, true).await;
        assert_eq!(run.code, 0, "{stall_after:?}: {run:?}");
        let report = run.json();
        let limit = if stall_after.is_some() {
            3_600_000
        } else {
            300_000
        };
        assert_eq!(report["stall_after_ms"], limit, "{report}");
        for shard_id in [&stuck, &current_id] {
            assert_eq!(
                shard(&report, name, shard_id.as_str())["behind"]["stalled"],
                false,
                "{stall_after:?}: {report}"
            );
        }
        assert_eq!(
            shard(&report, name, stuck.as_str())["behind"]["records"],
            3,
            "{report}"
        );
    }
    let table = status(Some("3600"), false).await;
    assert_eq!(table.code, 0, "{table:?}");
    assert!(!row(&table, &stuck).contains("STALLED?"), "{table:?}");
    assert!(!table.stdout.contains("PROBLEM"), "{}", table.stdout);
    drop(beating);
    clear(&*store, name).await;
}

/// Polls `check` every 200 ms until it gives `Some`, or panics naming `what` after `limit`.
async fn wait_until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// reset

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_moves_checkpoints_refuses_live_owners_and_takes_over_with_force() {
    let Some((url, app, store, beating)) = seeded_redis("cli-reset").await else {
        return;
    };
    let stream = SEEDED;
    let lease = |shard: &'static str| {
        let store = store.clone();
        async move {
            store
                .lease(stream, &ShardId::from(shard))
                .await
                .expect("read")
                .expect("lease")
        }
    };
    let reset = |more: &str| {
        kinsumer_line(format!(
            "reset --store {url} --app {app} --stream {stream} {more}"
        ))
    };

    // Unowned: reset_checkpoint, token unchanged; announced, so running consumers read it.
    let changes = store.changes().await.expect("changes");
    let run = reset("--shard s-2 --to sequence:12345 --yes").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("reset (unowned)"), "the plan: {run:?}");
    let s2 = lease("s-2").await;
    assert_eq!(
        (s2.checkpoint, s2.owner, s2.token),
        (Some(after("12345")), None, 0)
    );
    assert!(
        store.changes().await.expect("changes") > changes,
        "a reset moves the change counter on"
    );

    // Without --yes and without a terminal: refused, nothing changed.
    let run = reset("--shard s-2 --to trim-horizon").await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("pass --yes"), "{run:?}");
    assert_eq!(lease("s-2").await.checkpoint, Some(after("12345")));

    // A live owner: refused by name, nothing changed.
    let run = reset("--shard s-0 --shard s-2 --to latest --yes").await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("s-0: owned by live"), "{run:?}");
    assert!(run.stderr.contains("--force"), "{run:?}");
    assert_eq!(lease("s-0").await.checkpoint, Some(after("100")));
    assert_eq!(lease("s-2").await.checkpoint, Some(after("12345")));

    // --force: take, then release at the new checkpoint; the old owner's tenure is fenced.
    let run = reset("--shard s-0 --to latest --yes --force").await;
    assert_eq!(run.code, 0, "{run:?}");
    let s0 = lease("s-0").await;
    assert_eq!(
        (s0.checkpoint, s0.owner, s0.token),
        (Some(Checkpoint::Latest), None, 2)
    );
    let old = kinsumer::Tenure {
        shard: ShardId::from("s-0"),
        owner: ClientId::from("live"),
        token: 1,
    };
    assert!(matches!(
        store.checkpoint(stream, &old, &after("101")).await,
        Err(kinsumer::StoreError::LeaseLost { .. })
    ));

    // An owner without a client row has left: no --force needed.
    let run = reset("--shard s-1 --to trim-horizon --yes").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lease("s-1").await.checkpoint, Some(Checkpoint::TrimHorizon));

    // A finished lease, a shard with no lease, a sequence for many shards.
    let run = reset("--shard s-3 --to trim-horizon --yes --force").await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("finished"), "{run:?}");
    let run = reset("--shard s-9 --to trim-horizon --yes").await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("no lease for shard s-9") && run.stderr.contains("s-0, s-1"),
        "{run:?}"
    );
    let run = reset("--all --to sequence:5 --yes").await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("one --shard"), "{run:?}");

    drop(beating);
    clear(&*store, stream).await;
}

// ---------------------------------------------------------------------------------------------
// reset: repairing rows that do not decode, checking sequence numbers

/// A one-shard stream on kinesis-local, split: its parent and the two children (sorted).
async fn split_stream(kinesis: &aws_sdk_kinesis::Client) -> (TestStream, ShardId, [ShardId; 2]) {
    let stream = TestStream::create(kinesis, "repair", 1).await;
    let open = stream.open_shards().await;
    let parent = open.first().expect("one open shard").0.clone();
    stream.split(&parent, 1u128 << 127).await.expect("split");
    let mut children: Vec<ShardId> = stream
        .open_shards()
        .await
        .into_iter()
        .map(|(id, _, _)| ShardId::from(id))
        .collect();
    children.sort();
    assert_eq!(children.len(), 2, "a split has two children: {children:?}");
    (
        stream,
        ShardId::from(parent),
        [children[0].clone(), children[1].clone()],
    )
}

/// Leases as a fleet writes them for a split stream: the parent read to its end (finished), and
/// each child created with the parent as its parent.
async fn seed_split(
    store: &Arc<dyn LeaseStore>,
    stream: &str,
    parent: &ShardId,
    children: &[ShardId; 2],
) {
    let tenure = create_and_take(&**store, stream, parent, "gone").await;
    store.finish(stream, &tenure).await.expect("finish");
    for child in children {
        store
            .create_if_absent(stream, child, std::slice::from_ref(parent))
            .await
            .expect("create child");
    }
}

/// `reset` of the child whose row `spoil(stream, shard)` makes undecodable: refused without
/// `--source` (the row
/// stays as it is), repaired with it — unowned, at the new checkpoint, a token from the clock,
/// its parent from the listing — after which `status` reads every row, and a second repair is
/// refused without touching the row. `all` uses `--all` instead of `--shard`.
async fn assert_reset_repairs<F, Fut>(
    store: Arc<dyn LeaseStore>,
    store_url: &str,
    app: &str,
    endpoint: &str,
    all: bool,
    spoil: F,
) where
    F: FnOnce(String, ShardId) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let kinesis = kinesis_local::client(endpoint);
    let (stream, parent, children) = split_stream(&kinesis).await;
    let name = stream.name.as_str();
    seed_split(&store, name, &parent, &children).await;
    let child = &children[0];
    spoil(name.to_owned(), child.clone()).await;
    assert!(
        matches!(
            store.lease(name, child).await,
            Err(kinsumer::StoreError::Corrupt { .. })
        ),
        "the spoiled row does not decode"
    );
    let source = format!("kinesis://{name}?endpoint={endpoint}&region=us-east-1");
    let reset = |with_source: bool| {
        let which = if all {
            "--all".to_owned()
        } else {
            format!("--shard {child}")
        };
        let source = with_source.then(|| format!("--source {source}"));
        kinsumer_line(format!(
            "reset --store {store_url} --app {app} --stream {name} --to trim-horizon --yes \
             {which} {}",
            source.unwrap_or_default()
        ))
    };

    let refused = reset(false).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!("refused: {child}"))
            && refused.stderr.contains("--source")
            && refused.stderr.contains("does not decode"),
        "{refused:?}"
    );
    assert!(refused.stderr.contains("nothing changed"), "{refused:?}");
    assert!(
        matches!(
            store.lease(name, child).await,
            Err(kinsumer::StoreError::Corrupt { .. })
        ),
        "a refused repair writes nothing"
    );

    let (repaired, window) = timed(reset(true)).await;
    assert_eq!(repaired.code, 0, "{repaired:?}");
    assert!(
        repaired.stdout.contains("repair: rewrite the row")
            && repaired.stdout.contains(&format!("parents {parent}"))
            && repaired.stdout.contains("does not decode:")
            && repaired
                .stdout
                .contains(&format!("{child}: repaired; checkpoint now trim horizon")),
        "the plan names the repair and why: {repaired:?}"
    );
    let lease = assert_repaired(&*store, name, child, std::slice::from_ref(&parent), window).await;

    let status = kinsumer(&[
        "status", "--store", store_url, "--app", app, "--source", &source, "--json", "--sample",
        "0",
    ])
    .await;
    assert_eq!(status.code, 0, "every row decodes again: {status:?}");
    let report = status.json();
    let row = shard(&report, name, child.as_str());
    assert_eq!(
        row["parents"],
        serde_json::json!([parent.as_str()]),
        "{row}"
    );
    assert_eq!(row["checkpoint"], "TRIM_HORIZON", "{row}");
    assert_eq!(row["token"], lease.token, "{row}");
    assert_eq!(
        report["streams"][0]["corrupt"],
        serde_json::json!([]),
        "{report}"
    );

    // The row is healthy now: a second repair (another operator's, say) changes nothing.
    let other = kinsumer::Lease {
        token: lease.token + 1,
        ..kinsumer::Lease::new(child.clone(), vec![])
    };
    assert!(
        matches!(
            store.replace_corrupt(name, &other).await,
            Err(kinsumer::StoreError::LeaseLost { .. })
        ),
        "replace_corrupt refuses a healthy row"
    );
    assert_eq!(
        store.lease(name, child).await.expect("read"),
        Some(lease.clone()),
        "the healthy row is untouched"
    );
    // And the fleet can take it up from there.
    let taken = store
        .take(name, child, &ClientId::from("reader"), lease.token)
        .await
        .expect("the repaired lease can be taken");
    assert_eq!(taken.token, lease.token + 1);
    clear(&*store, name).await;
}

/// `decimal` + 1, in decimal (sequence numbers have more digits than any integer type).
/// Asserts that `reset` repaired the row of `shard`: it decodes, unowned, unfinished, at the
/// trim horizon, with its `parents`, and a token from the clock while it ran (`during`, ms),
/// above any the row held. Returns the lease.
async fn assert_repaired(
    store: &dyn LeaseStore,
    stream: &str,
    shard: &ShardId,
    parents: &[ShardId],
    during: std::ops::RangeInclusive<u64>,
) -> kinsumer::Lease {
    let lease = store
        .lease(stream, shard)
        .await
        .expect("the repaired row decodes")
        .expect("the row exists");
    assert!(
        during.contains(&lease.token),
        "a token from the clock: {lease:?}"
    );
    assert_eq!(
        lease,
        kinsumer::Lease {
            token: lease.token,
            checkpoint: Some(Checkpoint::TrimHorizon),
            ..kinsumer::Lease::new(shard.clone(), parents.to_vec())
        },
        "unowned, unfinished, at the new checkpoint, with its parents"
    );
    lease
}

fn plus_one(decimal: &str) -> String {
    let mut digits: Vec<u8> = decimal.bytes().collect();
    for d in digits.iter_mut().rev() {
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            return String::from_utf8(digits).expect("digits");
        }
    }
    format!("1{}", String::from_utf8(digits).expect("digits"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What `command` gives, and the wall-clock window (Unix ms) it ran in: a token a repair took
/// from the clock must fall inside it.
async fn timed<T>(
    command: impl std::future::Future<Output = T>,
) -> (T, std::ops::RangeInclusive<u64>) {
    let before_ms = now_ms();
    let out = command.await;
    (out, before_ms..=now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_repairs_a_row_that_does_not_decode_on_redis() {
    let Some((url, endpoint)) = with_kinesis(redis_url()) else {
        return;
    };
    let app = unique_name("cli-repair");
    let redis_store = RedisLeaseStore::connect(&url, &app).await.expect("Redis");
    let store: Arc<dyn LeaseStore> = Arc::new(redis_store.clone());
    let spoil = |stream: String, shard: ShardId| {
        let url = url.clone();
        async move {
            let mut conn = redis::Client::open(url.as_str())
                .expect("url")
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let _: i64 = redis::cmd("HSET")
                .arg(redis_store.leases_key(&stream))
                .arg(shard.as_str())
                .arg("{\"token\":\"01\"}")
                .query_async(&mut conn)
                .await
                .expect("hset");
        }
    };
    assert_reset_repairs(store, &url, &app, &endpoint, true, spoil).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_repairs_a_row_that_does_not_decode_on_postgres() {
    let Some((pg, endpoint)) = with_kinesis(postgres_url()) else {
        return;
    };
    let (app, pg_store) = pg_store_for(&pg, "cli-repair").await;
    let store: Arc<dyn LeaseStore> = Arc::new(pg_store.clone());
    let spoil = |stream: String, shard: ShardId| {
        let app = app.clone();
        async move {
            // A checkpoint that is none: a sub-sequence with a sign.
            let done = kinsumer::postgres::sqlx::query(
                "UPDATE kinsumer.leases SET checkpoint = 'AFTER:1/+1' \
                 WHERE application = $1 AND stream = $2 AND shard = $3",
            )
            .bind(&app)
            .bind(&stream)
            .bind(shard.as_str())
            .execute(pg_store.pool())
            .await
            .expect("update");
            assert_eq!(done.rows_affected(), 1);
        }
    };
    assert_reset_repairs(store, &pg, &app, &endpoint, false, spoil).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_repairs_a_row_that_does_not_decode_on_dynamodb() {
    let Some(moto_endpoint) = moto::endpoint() else {
        return;
    };
    let Some(endpoint) = kinesis_local::endpoint() else {
        return;
    };
    let table = moto::unique_table("cli-repair");
    let client = moto::client(&moto_endpoint);
    let config = DynamoConfig::new("billing")
        .with_table(table.clone())
        .create_table_if_missing(true);
    let store: Arc<dyn LeaseStore> = Arc::new(
        DynamoLeaseStore::open(client.clone(), config)
            .await
            .expect("the table"),
    );
    let spoil = |stream: String, shard: ShardId| {
        let (client, table) = (client.clone(), table.clone());
        async move {
            use kinsumer::dynamo::aws_sdk_dynamodb::types::AttributeValue;
            // The token as a string: an attribute of the wrong type.
            client
                .update_item()
                .table_name(&table)
                .key("pk", AttributeValue::S(format!("lease#billing#{stream}")))
                .key("sk", AttributeValue::S(shard.to_string()))
                .update_expression("SET #t = :v")
                .expression_attribute_names("#t", "token")
                .expression_attribute_values(":v", AttributeValue::S("1".into()))
                .send()
                .await
                .expect("update");
        }
    };
    let url = format!("dynamodb://{table}?endpoint={moto_endpoint}&region=us-east-1");
    assert_reset_repairs(store, &url, "billing", &endpoint, false, spoil).await;
    moto::drop_table(&client, &table).await;
}

/// With `--source`, `--to sequence:N` must name a record the shard holds: a number past its tip,
/// one of another shard, or a user record a plain record does not have is refused before
/// anything is written; a record it holds is accepted. Without `--source`, a note says the
/// number was not checked.
/// A lease whose token reached PostgreSQL's largest `bigint` can never be taken again (the
/// engine sets it aside): `reset` rewrites it — with its parents, which the row still tells,
/// so no `--source` — at a token of its own; from a registered owner only with `--force`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_frees_a_lease_whose_token_is_exhausted() {
    let Some(pg) = postgres_url() else {
        return;
    };
    let (app, pg_store) = pg_store_for(&pg, "cli-exhausted").await;
    let store: Arc<dyn LeaseStore> = Arc::new(pg_store.clone());
    let (stream, shard, parent) = ("orders", ShardId::from("s-stuck"), ShardId::from("s-p"));
    store
        .create_if_absent(stream, &shard, std::slice::from_ref(&parent))
        .await
        .expect("create");
    let owner = kinsumer::ClientId::from("owner");
    store.take(stream, &shard, &owner, 0).await.expect("take");
    store
        .heartbeat(&owner, 1)
        .await
        .expect("the owner is registered");
    let done = kinsumer::postgres::sqlx::query(
        "UPDATE kinsumer.leases SET token = 9223372036854775807 \
         WHERE application = $1 AND stream = $2 AND shard = $3",
    )
    .bind(&app)
    .bind(stream)
    .bind(shard.as_str())
    .execute(pg_store.pool())
    .await
    .expect("update");
    assert_eq!(done.rows_affected(), 1);
    let reset = |force: bool| {
        kinsumer_line(format!(
            "reset --store {pg} --app {app} --stream {stream} --shard s-stuck --to trim-horizon \
             --yes {}",
            flag(force, "--force")
        ))
    };

    let refused = reset(false).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("can never be taken again") && refused.stderr.contains("--force"),
        "{refused:?}"
    );
    let (freed, window) = timed(reset(true)).await;
    assert_eq!(freed.code, 0, "{freed:?}");
    assert!(
        freed
            .stdout
            .contains("token 9223372036854775807 is exhausted")
            && freed
                .stdout
                .contains("s-stuck: repaired; checkpoint now trim horizon"),
        "{freed:?}"
    );
    let lease = assert_repaired(&*store, stream, &shard, &[parent], window).await;
    let taken = store
        .take(
            stream,
            &shard,
            &kinsumer::ClientId::from("next"),
            lease.token,
        )
        .await
        .expect("the lease can be taken again");
    assert_eq!(taken.token, lease.token + 1);
    clear(&*store, stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_refuses_a_sequence_number_the_shard_does_not_hold() {
    let Some((url, endpoint, stream, open)) = with_stream(redis_url(), "sequence", 2).await else {
        return;
    };
    let name = stream.name.as_str();
    let (first, second) = (ShardId::from(open[0].0.as_str()), &open[1]);
    let put = |hash_key: u128| stream.put_at(hash_key, b"record");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(put(open[0].1).await);
    }
    let of_second = put(second.2).await;
    let app = unique_name("cli-sequence");
    let store: Arc<dyn LeaseStore> =
        Arc::new(RedisLeaseStore::connect(&url, &app).await.expect("Redis"));
    store
        .create_if_absent(name, &first, &[])
        .await
        .expect("create");
    let source = format!("kinesis://{name}?endpoint={endpoint}&region=us-east-1");
    let reset = |to: String, with_source: bool| {
        let source = with_source.then(|| format!("--source {source}"));
        kinsumer_line(format!(
            "reset --store {url} --app {app} --stream {name} --shard {first} --to {to} --yes {}",
            source.unwrap_or_default()
        ))
    };
    let checkpoint = || {
        let store = store.clone();
        let first = first.clone();
        async move {
            store
                .lease(name, &first)
                .await
                .expect("read")
                .expect("lease")
                .checkpoint
        }
    };

    let past_tip: SequenceNumber = plus_one(&held[2]).parse().expect("a sequence number");
    for (to, why) in [
        (format!("sequence:{past_tip}"), "past the tip"),
        (format!("sequence:{of_second}"), "another shard's record"),
        (
            format!("sequence:{}/3", held[1]),
            "a user record of a plain record",
        ),
    ] {
        let run = reset(to.clone(), true).await;
        assert_eq!(run.code, 1, "{why}: {run:?}");
        assert!(
            run.stderr.contains(&format!("refused: {first}"))
                && run.stderr.contains("nothing changed"),
            "{why}: {run:?}"
        );
        assert_eq!(checkpoint().await, None, "{why}: nothing written");
    }
    let plain = reset(format!("sequence:{}/3", held[1]), true).await;
    assert!(plain.stderr.contains("not a KPL aggregate"), "{plain:?}");

    let ok = reset(format!("sequence:{}", held[1]), true).await;
    assert_eq!(ok.code, 0, "a record the shard holds: {ok:?}");
    assert_eq!(checkpoint().await, Some(after(&held[1])));
    assert!(!ok.stderr.contains("not checked"), "{ok:?}");

    let unchecked = reset(format!("sequence:{past_tip}"), false).await;
    assert_eq!(unchecked.code, 0, "{unchecked:?}");
    assert!(
        unchecked.stderr.contains("was not checked") && unchecked.stderr.contains("--source"),
        "{unchecked:?}"
    );

    let mut other = reset("trim-horizon".into(), false).await;
    assert_eq!(other.code, 0, "{other:?}");
    other = kinsumer_line(format!(
        "reset --store {url} --app {app} --stream another-stream --source {source} \
         --shard {first} --to latest --yes"
    ))
    .await;
    assert_eq!(other.code, 2, "{other:?}");
    assert!(
        other.stderr.contains("must be the same stream"),
        "{other:?}"
    );
    clear(&*store, name).await;
}

// ---------------------------------------------------------------------------------------------
// tail

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_what_was_produced() {
    let Some(endpoint) = kinesis_local::endpoint() else {
        return;
    };
    let kinesis = kinesis_local::client(&endpoint);
    let stream = TestStream::create(&kinesis, "tail", 2).await;
    let produced: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("key-{i}"), format!("record {i}").into_bytes()))
        .collect();
    stream.put_all(&produced).await;
    let url = format!(
        "kinesis://{}?endpoint={endpoint}&region=us-east-1",
        stream.name
    );

    let run = kinsumer_line(format!(
        "tail --source {url} --from trim-horizon --format json --limit 30 --idle-exit 30"
    ))
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let mut printed: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            assert_eq!(l["data_encoding"], "utf8", "{l}");
            (
                l["partition_key"].as_str().unwrap_or("").to_owned(),
                l["data"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    printed.sort();
    let mut expected: Vec<(String, String)> = produced
        .iter()
        .map(|(k, d)| (k.clone(), String::from_utf8_lossy(d).into_owned()))
        .collect();
    expected.sort();
    assert_eq!(printed, expected);
    assert!(run.stderr.contains("tailing stream"), "{run:?}");

    // Text, until idle; then from after a record of one shard: the rest of that shard.
    let run = kinsumer_line(format!(
        "tail --source {url} --from trim-horizon --idle-exit 2"
    ))
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 30, "{run:?}");
    assert!(run.stderr.contains("--idle-exit"), "{run:?}");
    let first = &lines[0];
    let (shard_id, sequence) = (
        first["shard"].as_str().expect("shard"),
        first["sequence"].as_str().expect("sequence"),
    );
    let in_shard = lines.iter().filter(|l| l["shard"] == shard_id).count();
    let run = kinsumer_line(format!(
        "tail --source {url} --shard {shard_id} --from sequence:{sequence} --format hex \
         --idle-exit 2"
    ))
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let rest: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(rest.len(), in_shard - 1, "{run:?}");
    assert!(rest.iter().all(|l| l.starts_with(shard_id)), "{run:?}");
    assert!(!run.stdout.contains(&format!(" {sequence} ")), "{run:?}");

    let run = kinsumer_line(format!("tail --source {url} --shard shardId-999 --limit 1")).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("has no shard shardId-999"), "{run:?}");
}

// ---------------------------------------------------------------------------------------------
// Usage: no services needed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_flags_are_one_line_errors_with_exit_2() {
    let reset = "reset --store memory:// --app a --stream s";
    let cases = [
        (
            "status --store mysql://h/db --app a".to_owned(),
            "unknown scheme `mysql://`",
        ),
        (
            format!("{reset} --all --to timestamp:2099-01-01T00:00:00Z --yes"),
            "is in the future",
        ),
        (
            "status --store localhost:6379 --app a".to_owned(),
            "examples: memory://",
        ),
        (
            "status --store memory:// --app a --source kinesis://".to_owned(),
            "no stream name",
        ),
        (
            "status --store memory:// --app a --sample=-1".to_owned(),
            "must be between 0 and 86400",
        ),
        (
            "tail --source kinesis://s?endpoint=localhost:4567".to_owned(),
            "must start with http://",
        ),
        (
            "tail --source kinesis://s --format xml".to_owned(),
            "invalid value 'xml'",
        ),
        (
            "tail --source kinesis://s?region=us-east-1 --from sequence:1".to_owned(),
            "one --shard",
        ),
        (
            format!("{reset} --all --to yesterday"),
            "bad position: `yesterday`",
        ),
        (
            format!("{reset} --all --to timestamp:2026-02-30T00:00:00Z"),
            "day was not in range",
        ),
        (format!("{reset} --to latest"), "--shard <ID>|--all"),
        (
            format!("{reset} --to latest --all --shard x"),
            "cannot be used with",
        ),
    ];
    for (line, expected) in cases {
        let run = kinsumer(&words(&line)).await;
        assert_eq!(run.code, 2, "{line}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "{line}: {expected:?} in {run:?}"
        );
        assert!(run.stdout.is_empty(), "{line}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_exit_2_and_hides_credentials() {
    let run = kinsumer(&words(
        "status --store redis://:secret@127.0.0.1:1 --app a --sample 0",
    ))
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("Redis at redis://***@127.0.0.1:1"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("secret"), "{run:?}");
    // Every way a password can be in a URL, in every place a URL is shown: a rejected value
    // (clap's own message), a query password in the header and JSON, and errors.
    let pg = "postgres://u@127.0.0.1:1/db?password=Secret1";
    for line in [
        "status --store mysql://u:Secret1@h/db --app a".to_owned(),
        "reset --store mysql://u:Secret1@h/db --app a --stream s --all --to latest".to_owned(),
        format!("status --store {pg} --app a --sample 0"),
        format!("status --store {pg} --app a --sample 0 --json"),
        "status --store redis://:Secret1@127.0.0.1:1 --app a --sample x".to_owned(),
    ] {
        let run = kinsumer(&words(&line)).await;
        assert_eq!(run.code, 2, "{line}: {run:?}");
        assert!(
            !run.stderr.contains("Secret1") && !run.stdout.contains("Secret1"),
            "{line}: {run:?}"
        );
    }
}

/// A `--source` stream that does not exist is exit 2 ("an unreachable store or stream"), with
/// the report still shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_a_missing_source_stream_exits_2() {
    let Some(endpoint) = kinesis_local::endpoint() else {
        return;
    };
    let run = kinsumer(&words(&format!(
        "status --store memory:// --app a --sample 0 \
         --source kinesis://no-such-stream-{}?endpoint={endpoint}&region=us-east-1",
        std::process::id()
    )))
    .await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stdout.contains("cannot list the stream's shards"),
        "{run:?}"
    );
}

/// A closed stderr or stdout (`kinsumer … 2>&1 | head`) ends a command quietly, never with a
/// panic (exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pipes_end_quietly() {
    for (line, close_stdout) in [
        ("status --store memory:// --app a --sample 0.3", false),
        ("status --store memory:// --app a --sample 0.3", true),
        ("status --help", true),
        ("status --store nope:// --app a", false),
    ] {
        let code = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_kinsumer"))
                .args(words(line))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the binary runs");
            // The reader goes away at once.
            drop(child.stderr.take());
            if close_stdout {
                drop(child.stdout.take());
            }
            child.wait().expect("wait").code()
        })
        .await
        .expect("join");
        assert_ne!(code, Some(101), "{line:?} panicked on a closed pipe");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_stream_shows_clients_and_says_how_to_see_leases() {
    let status = "status --store memory:// --app a --sample 0";
    let run = kinsumer(&words(status)).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("no clients"), "{run:?}");
    assert!(run.stdout.contains("add --stream NAME"), "{run:?}");
    let run = kinsumer(&words(&format!("{status} --json"))).await;
    assert_eq!(run.json()["streams"], Value::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_shows_examples_in_its_help() {
    for command in ["status", "reset", "tail"] {
        let run = kinsumer(&[command, "--help"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stdout.contains("Examples:")
                && run.stdout.contains(&format!("kinsumer {command} ")),
            "{command} --help:\n{}",
            run.stdout
        );
    }
}
