//! Classifying the SDK's errors (DESIGN §6) before the store maps them onto the contract.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;

use kinsumer_core::store::StoreError;

use crate::item::Item;

/// What went wrong with one request, before the store puts it in context.
#[derive(Debug)]
pub(crate) enum Failure {
    /// `ConditionalCheckFailedException`, with the item as it was (`ALL_OLD`), if any.
    Condition(Option<Item>),
    /// Throttled (already retried by the store); the server's message.
    Throttled(String),
    /// `ResourceNotFoundException`: the table does not exist.
    NoTable,
    /// The request may or may not have been applied (timeout, lost connection, 5xx).
    Ambiguous(String),
    /// Anything else, classified.
    Other(StoreError),
}

/// Error codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "Throttling",
    "TooManyRequestsException",
];

/// Error codes that retrying cannot fix.
const FATAL: &[&str] = &[
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "IncompleteSignatureException",
    "ValidationException",
    "SerializationException",
    "ItemCollectionSizeLimitExceededException",
    "InvalidEndpointException",
];

/// Pulls the `ALL_OLD` item out of an operation's conditional-check failure.
pub(crate) trait ConditionItem {
    /// `Some(item)` if this is a conditional-check failure.
    fn condition_item(&self) -> Option<Option<Item>>;
}

impl ConditionItem for UpdateItemError {
    fn condition_item(&self) -> Option<Option<Item>> {
        match self {
            UpdateItemError::ConditionalCheckFailedException(e) => Some(e.item().cloned()),
            _ => None,
        }
    }
}

impl ConditionItem for PutItemError {
    fn condition_item(&self) -> Option<Option<Item>> {
        match self {
            PutItemError::ConditionalCheckFailedException(e) => Some(e.item().cloned()),
            _ => None,
        }
    }
}

impl ConditionItem for DeleteItemError {
    fn condition_item(&self) -> Option<Option<Item>> {
        match self {
            DeleteItemError::ConditionalCheckFailedException(e) => Some(e.item().cloned()),
            _ => None,
        }
    }
}

macro_rules! no_condition {
    ($($t:ty),*) => {$(
        impl ConditionItem for $t {
            fn condition_item(&self) -> Option<Option<Item>> {
                None
            }
        }
    )*};
}

no_condition!(
    aws_sdk_dynamodb::operation::get_item::GetItemError,
    aws_sdk_dynamodb::operation::query::QueryError,
    aws_sdk_dynamodb::operation::describe_table::DescribeTableError,
    aws_sdk_dynamodb::operation::create_table::CreateTableError,
    aws_sdk_dynamodb::operation::describe_time_to_live::DescribeTimeToLiveError,
    aws_sdk_dynamodb::operation::update_time_to_live::UpdateTimeToLiveError
);

/// Classifies one failed request.
pub(crate) fn classify<E>(err: SdkError<E, HttpResponse>) -> Failure
where
    E: ConditionItem + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ConstructionFailure(_) => Failure::Other(StoreError::Fatal(format!(
            "the DynamoDB request could not be built: {message}"
        ))),
        // Sent or maybe sent, no answer: the outcome is unknown.
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => Failure::Ambiguous(message),
        // A connection refused before sending is not ambiguous, but settling it by a re-read
        // costs one read and keeps one path.
        SdkError::DispatchFailure(_) => Failure::Ambiguous(message),
        SdkError::ServiceError(service) => {
            let e = service.err();
            if let Some(item) = e.condition_item() {
                return Failure::Condition(item);
            }
            let code = e.code().unwrap_or("");
            let status = service.raw().status().as_u16();
            if THROTTLING.contains(&code) {
                Failure::Throttled(message)
            } else if code == "ResourceNotFoundException" {
                Failure::NoTable
            } else if FATAL.contains(&code) {
                Failure::Other(StoreError::Fatal(message))
            } else if status >= 500 {
                Failure::Ambiguous(message)
            } else {
                // TransactionConflictException, unknown 4xx codes: refused, retry later.
                Failure::Other(StoreError::Transient(message))
            }
        }
        _ => Failure::Ambiguous(message),
    }
}
