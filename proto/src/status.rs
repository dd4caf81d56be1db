//! Machine-readable reasons on gRPC errors: every service answers an error with its code,
//! a message for people, and a `google.rpc.ErrorInfo` in the status details (AIP-193)
//! whose `reason` names the error kind (`NOT_WITNESSED`, `UNKNOWN_SENDER`, ...) and whose
//! `domain` is [`DOMAIN`]. Clients and tests match on the reason, never on the message.

use tonic_types::{ErrorDetails, StatusExt as _};

/// The `domain` of every Blockpost `ErrorInfo`.
pub const DOMAIN: &str = "blockpost.v1";

/// A status with `code`, `message` and an `ErrorInfo` carrying `reason`.
pub fn with_reason(code: tonic::Code, message: impl Into<String>, reason: &str) -> tonic::Status {
    tonic::Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, std::collections::HashMap::new()),
    )
}

/// The reason of a Blockpost status, if it carries one.
pub fn reason(status: &tonic::Status) -> Option<String> {
    status
        .get_details_error_info()
        .filter(|i| i.domain == DOMAIN)
        .map(|i| i.reason)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_reason_survives_the_wire_form() {
        let s = with_reason(
            tonic::Code::NotFound,
            "no block at height 9",
            "BLOCK_NOT_FOUND",
        );
        // What a client receives: code, message and the encoded details.
        let back = tonic::Status::with_details(s.code(), s.message(), s.details().to_vec().into());
        assert_eq!(back.code(), tonic::Code::NotFound);
        assert_eq!(reason(&back).as_deref(), Some("BLOCK_NOT_FOUND"));
        assert_eq!(reason(&tonic::Status::not_found("plain")), None);
    }
}
