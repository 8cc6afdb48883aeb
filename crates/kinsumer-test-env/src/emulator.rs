//! What the clients of the two AWS emulators (kinesis-local, moto) share: plain HTTP, dummy
//! credentials, one region, names no other test (or earlier run) uses — and an interceptor
//! that replaces some of the emulator's replies with errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::behavior_version::BehaviorVersion;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_types::SdkConfig;
use aws_types::region::Region;

// Both SDKs re-export the same smithy interceptor types: one interceptor serves either client.
#[cfg(not(feature = "kinesis-local"))]
use aws_sdk_dynamodb::config as sdk;
#[cfg(feature = "kinesis-local")]
use aws_sdk_kinesis::config as sdk;

/// The configuration of a client for an emulator at `endpoint`; each SDK's `config::Builder`
/// starts `From` it.
pub fn sdk_config(endpoint: &str) -> SdkConfig {
    let credentials = Credentials::new("test", "test", None, None, "kinsumer-tests");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build()
}

/// `{prefix}-{pid}-{nanos}-{n}`: a stream or table name no other test, process or earlier
/// run uses.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Which of an emulator's replies to replace, as [`InjectReplies`] asks request by request.
pub trait ReplaceReplies: std::fmt::Debug + Send + Sync + 'static {
    /// The status and body to answer this request of `operation` (`"GetRecords"`,
    /// `"UpdateItem"`, ...) with instead of the server's reply, or `None` to pass it through.
    fn replace(&self, operation: &str) -> Option<(u16, String)>;
}

/// An interceptor for either emulator's client that replaces replies as `R` decides, after the
/// server handled the request: a reply lost on its way back, throttling, an expired iterator.
/// `R` is shared so that the test can still read what it counted.
#[derive(Debug)]
pub struct InjectReplies<R>(pub Arc<R>);

impl<R> Clone for InjectReplies<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<R: ReplaceReplies> sdk::Intercept for InjectReplies<R> {
    fn name(&self) -> &'static str {
        "inject-replies"
    }

    fn modify_before_deserialization(
        &self,
        ctx: &mut sdk::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _: &sdk::RuntimeComponents,
        cfg: &mut sdk::ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(operation) = cfg.load::<Metadata>().map(Metadata::name) else {
            return Ok(());
        };
        let Some((status, body)) = self.0.replace(operation) else {
            return Ok(());
        };
        let response = ctx.response_mut();
        *response.status_mut() = status.try_into()?;
        *response.body_mut() = body.into();
        Ok(())
    }
}
