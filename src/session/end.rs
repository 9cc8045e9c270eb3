//! Every way a session ends ([`End`]), with the close code, the close frame and the metrics
//! label each one gets, in one exhaustive `match` each.

use crate::protocol::{CloseCode, ws};

/// Every way a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The client sent a close frame, with this code if it had one.
    ClientClosed(Option<u16>),
    /// The hub, the control API or shutdown asked for a close with this code.
    Requested(CloseCode),
    /// A binary frame arrived.
    BinaryFrame,
    /// An inbound message was larger than allowed.
    TooBig,
    /// A text frame was not UTF-8.
    BadUtf8,
    /// A compressed message was not a valid deflate stream.
    BadDeflate,
    /// The client broke RFC 6455.
    ProtocolViolation,
    /// A message came in more than `limits.max_fragments_per_message` frames.
    TooManyFragments,
    /// A fragmented message did not complete within `limits.fragment_timeout`.
    FragmentTimeout,
    /// The client stayed over its frame budget for `limits.throttled_close_after`.
    Flooding,
    /// The TCP connection failed or closed without a close frame.
    TransportLost,
}

impl End {
    /// The close code to send; `None` when the transport is gone and nothing can be sent.
    pub(super) const fn close_code(self) -> Option<CloseCode> {
        match self {
            End::ClientClosed(_) => Some(CloseCode::Normal),
            End::Requested(code) => Some(code),
            End::BinaryFrame => Some(CloseCode::UnsupportedData),
            End::TooBig => Some(CloseCode::MessageTooBig),
            End::BadUtf8 | End::BadDeflate => Some(CloseCode::InvalidPayload),
            End::ProtocolViolation => Some(CloseCode::ProtocolError),
            End::TooManyFragments | End::FragmentTimeout | End::Flooding => {
                Some(CloseCode::PolicyViolation)
            }
            End::TransportLost => None,
        }
    }

    /// A bounded label for metrics and logs.
    pub(super) const fn label(self) -> &'static str {
        match self {
            End::TooManyFragments => "too_many_fragments",
            End::BadDeflate => "bad_deflate",
            End::FragmentTimeout => "fragment_timeout",
            End::Flooding => "frame_flood",
            End::TransportLost => "transport_lost",
            End::ClientClosed(_) => CloseCode::Normal.label(),
            End::Requested(code) => code.label(),
            End::BinaryFrame | End::TooBig | End::BadUtf8 | End::ProtocolViolation => {
                match self.close_code() {
                    Some(code) => code.label(),
                    None => "transport_lost",
                }
            }
        }
    }

    /// The close frame to send: a client's close is answered with its own code (or an empty
    /// close frame when it sent none), RFC 6455 section 5.5.1.
    pub(super) fn close_frame(self) -> Option<bytes::Bytes> {
        match self {
            End::ClientClosed(None) => Some(ws::server_frame(0x8, &[])),
            End::ClientClosed(Some(code)) => Some(ws::close_frame(code, "")),
            _ => self
                .close_code()
                .map(|code| ws::close_frame(code.code(), code.reason())),
        }
    }
}
