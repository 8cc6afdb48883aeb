//! What an idle fleet costs Redis: 10 clients × 1,000 shards with the default intervals,
//! measured with the server's own counters on a private `redis-server` (so nothing else is
//! counted). Idle writes are one heartbeat per client per `heartbeat_interval`, whatever the
//! shard count; reads are the membership polls (`clients()`) and the periodic full lease reads
//! (`leases()`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kinsumer_core::Config;
use kinsumer_redis::RedisLeaseStore;
use kinsumer_test_env::fleet::wait_until_balanced;
use kinsumer_testkit::MemoryStream;
use kinsumer_testkit::conformance::fleet::start_acking;
use tokio::time::sleep;

const CLIENTS: usize = 10;
const SHARDS: usize = 1_000;
const WINDOW: Duration = Duration::from_secs(10);

/// `INFO commandstats` as command → calls, plus `total_commands_processed` and the bytes sent.
async fn counters(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for section in ["commandstats", "stats"] {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(conn)
            .await
            .expect("info");
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("cmdstat_") {
                let (name, fields) = rest.split_once(':').unwrap_or((rest, ""));
                let calls = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                out.insert(name.to_owned(), calls);
            } else if let Some((name, value)) = line.trim().split_once(':')
                && matches!(name, "total_commands_processed" | "total_net_output_bytes")
            {
                out.insert(name.to_owned(), value.parse().unwrap_or(0));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_store_cost_of_10_clients_and_1000_leases() {
    if common::redis_url().is_none() {
        return;
    }
    let server = common::PrivateRedis::start(&["--appendonly", "no"]);
    let url = server.url();
    let app = common::unique_app("idle");
    let stream = MemoryStream::new("idle", SHARDS);
    let config = Config::new(&app); // the defaults: heartbeat 2 s, membership poll 200 ms, ...
    let heartbeat = config.heartbeat_interval;

    let mut fleet = Vec::new();
    for n in 0..CLIENTS {
        let store = RedisLeaseStore::connect(&url, &app).await.expect("connect");
        let config = config.clone().with_client_id(format!("client-{n}"));
        // Nothing is ever produced; drain anyway so the fleet behaves as in production.
        fleet.push(start_acking(config, stream.clone(), store));
    }

    // Settle: every lease taken, balanced, then a little longer.
    let settled_in = wait_until_balanced(
        fleet.iter().map(|(c, _)| c),
        SHARDS,
        Duration::from_secs(120),
    )
    .await;
    sleep(Duration::from_secs(5)).await;

    let mut conn = common::raw_connection(&url).await;
    let before = counters(&mut conn).await;
    let window_start = Instant::now();
    sleep(WINDOW).await;
    let after = counters(&mut conn).await;
    let secs = window_start.elapsed().as_secs_f64();

    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let per_s = |n: u64| n as f64 / secs;
    // Our own two INFO calls (four with the `stats` section) are not the fleet's.
    let info_calls = delta("info");
    let total = delta("total_commands_processed") - info_calls;
    // A heartbeat is one `HSET`. The lease scripts' `HSET`s are counted under `hset` too, but an
    // idle fleet runs no script (asserted below), so these are the heartbeats alone.
    let heartbeats = delta("hset");
    let lease_writes = delta("evalsha") + delta("eval");
    let deregisters = delta("hdel");
    let writes = heartbeats + lease_writes + deregisters;
    let hgetall = delta("hgetall");
    let hget = delta("hget");
    let reads = hgetall + hget;
    let out_bytes = delta("total_net_output_bytes");
    let expected_writes = CLIENTS as f64 / heartbeat.as_secs_f64();

    println!(
        "idle cost, {CLIENTS} clients x {SHARDS} leases, default intervals (heartbeat {heartbeat:?}, \
         membership poll 200 ms, lease read 5 s), settled in {:.1} s, measured over {secs:.1} s:",
        settled_in.as_secs_f64()
    );
    println!("  commands/s total      {:8.1}", per_s(total));
    println!(
        "  writes/s              {:8.1}   (heartbeats {:.1}/s, lease writes {:.1}/s, expected {expected_writes:.1}/s)",
        per_s(writes),
        per_s(heartbeats),
        per_s(lease_writes + deregisters)
    );
    println!(
        "  reads/s               {:8.1}   (HGETALL {:.1}/s: clients() + leases(); HGET {:.1}/s)",
        per_s(reads),
        per_s(hgetall),
        per_s(hget)
    );
    println!("  bytes sent/s          {:8.0}", per_s(out_bytes));
    println!("  per command: {:?}", {
        let mut d: BTreeMap<&str, u64> = BTreeMap::new();
        for name in after.keys().filter(|k| !k.starts_with("total_")) {
            let n = delta(name);
            if n > 0 {
                d.insert(name, n);
            }
        }
        d
    });

    // Idle writes are the heartbeats and nothing else: one per client per interval.
    assert_eq!(
        lease_writes + deregisters,
        0,
        "lease writes in an idle fleet"
    );
    let rate = per_s(heartbeats);
    assert!(
        (expected_writes * 0.8..=expected_writes * 1.2).contains(&rate),
        "heartbeats {rate:.2}/s, expected {expected_writes:.2}/s"
    );

    for (consumer, reader) in fleet {
        consumer.shutdown().await.expect("clean shutdown");
        reader.await.expect("reader");
    }
    drop(server);
}
