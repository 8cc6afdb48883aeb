//! A fleet on the in-memory stream with its metrics on a Prometheus endpoint.
//!
//! ```sh
//! cargo run -p kinsumer-cli --example prometheus -- 127.0.0.1:9100
//! curl -s http://127.0.0.1:9100/metrics | grep kinsumer_
//! ```
//!
//! kinsumer reports through the `metrics` facade and forces no exporter on you: installing
//! one recorder (here `metrics-exporter-prometheus`) is all it takes. `kinsumer demo
//! --metrics-addr ADDR` does the same around the full demo.

use std::time::Duration;

use futures::StreamExt;
use kinsumer::testkit::{MemoryLeaseStore, MemoryStream};
use kinsumer::{Config, Consumer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".into())
        .parse()?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    println!("metrics on http://{addr}/metrics; Ctrl-C to stop");

    let stream = MemoryStream::new("orders", 4);
    let store = MemoryLeaseStore::new();
    for id in ["worker-1", "worker-2"] {
        let mut consumer = Consumer::new(
            Config::new("billing").with_client_id(id),
            stream.clone(),
            store.clone(),
        )?;
        let mut records = consumer.records()?;
        tokio::spawn(async move {
            while let Some(Ok(record)) = records.next().await {
                record.ack();
            }
            drop(consumer);
        });
    }
    let mut n = 0u64;
    loop {
        stream.put(&format!("customer-{}", n % 100), format!("order {n}"))?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
