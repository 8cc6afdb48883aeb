//! The AWS configuration for the Kinesis source and the DynamoDB store, without a second TLS
//! stack: [`http_client`] is the one HTTP client (rustls with the *ring* provider; it also
//! speaks plain `http://` to emulators), and [`sdk_config`] loads the standard chain
//! (environment, profile, web identity, instance metadata) over it.
//!
//! The AWS SDK crates are built with `default-features = false`, so they bring no HTTP client
//! of their own: give them this one (or your own) through the configuration.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use kinsumer::kinesis::{KinesisSource, aws_sdk_kinesis};
//!
//! let aws = kinsumer::aws::sdk_config().await;
//! let source = KinesisSource::new(aws_sdk_kinesis::Client::new(&aws), "orders");
//!
//! // Or the loader, to set a region or an emulator's endpoint first:
//! let local = kinsumer::aws::loader()
//!     .region(kinsumer::aws::aws_config::Region::new("eu-west-1"))
//!     .endpoint_url("http://127.0.0.1:4567")
//!     .load()
//!     .await;
//! # let _ = (source, local);
//! # Ok(())
//! # }
//! ```

/// The `aws-config` crate, for its types (`Region`, `SdkConfig`, the loader).
pub use aws_config;

/// The HTTP client for every AWS client: rustls with the *ring* crypto provider, webpki roots.
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The standard chain's loader (latest behaviour version) with [`http_client`]: set a region or
/// an endpoint on it, then `.load().await`.
pub fn loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http_client())
}

/// The configuration from the standard chain, over [`http_client`].
pub async fn sdk_config() -> aws_config::SdkConfig {
    loader().load().await
}
