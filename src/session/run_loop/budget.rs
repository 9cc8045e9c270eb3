//! A client's budgets: every frame is charged to its frame or control budget (`charge`), and
//! a stretch over either is refused, paused and, past `limits.throttled_close_after`,
//! closed; publishes are charged to the client's and the channel's bytes per second and to
//! the user's (or the address's) publishes per minute.

use std::{sync::Arc, time::Duration};

use super::{End, Session};
use crate::{
    protocol::{self, ChannelName, ErrorCode},
    rates::RateKey,
    telemetry::{self, RateScope},
    throttle::Quota,
};

/// Refusals further apart than this end a client's stretch over budget.
const THROTTLE_GAP_MS: u64 = 1000;

/// Which of a client's budgets a frame is charged to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Budget {
    /// Messages and fragments.
    Frames,
    /// Pings and pongs.
    Control,
}

impl Session {
    /// Takes one publish from the user's budget (or, anonymous, the address's): `false`
    /// (the client told `rate_limited`) when it has none left.
    pub(in crate::session) async fn charge_publish_rate(&self, id: Option<u64>) -> bool {
        let Some(rates) = &self.ctx.publish_rates else {
            return true;
        };
        let key = match (self.identity(), &self.source) {
            (Some(identity), _) => RateKey::User(Arc::clone(&identity.user)),
            (None, Some(source)) => RateKey::Address(**source),
            (None, None) => return true,
        };
        let Err(limited) = rates.take(&key).await else {
            return true;
        };
        let (scope, key_name, whose) = if limited.user {
            (
                RateScope::UserPublishes,
                "publishes_per_minute_per_user",
                "this user",
            )
        } else {
            (
                RateScope::AddressPublishes,
                "publishes_per_minute_per_address",
                "anonymous connections from this address",
            )
        };
        telemetry::rate_limited(scope);
        let retry_after_ms = u64::try_from(limited.retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let message = format!(
            "{whose} published over {} times a minute (limits.{key_name}); retry after \
             {retry_after_ms} ms",
            limited.per_minute
        );
        telemetry::metrics().protocol_error(ErrorCode::RateLimited);
        self.send(protocol::encode_rate_limited(id, &message, retry_after_ms));
        false
    }

    /// Takes a token for one frame from `budget`: `Ok(None)` when there was one,
    /// `Ok(Some(wait))` when the frame is refused and reading must pause, `Err` when the client
    /// has been over budget for `throttled_close_after`.
    pub(super) fn charge(&mut self, budget: Budget) -> Result<Option<Duration>, End> {
        let (bucket, quota, scope) = match budget {
            Budget::Frames => (
                &self.throttle,
                self.ctx.settings.client_quota,
                RateScope::Client,
            ),
            Budget::Control => (
                &self.control,
                self.ctx.settings.control_quota,
                RateScope::ClientControl,
            ),
        };
        let Some(quota) = quota else {
            return Ok(None);
        };
        let Err(rejected) = bucket.try_acquire(&quota, self.ctx.hub.clock_ns(), 1) else {
            return Ok(None);
        };
        telemetry::rate_limited(scope);
        let now = self.ctx.hub.clock_ms().max(1);
        if self.throttled_since_ms == 0 || now - self.last_refused_ms > THROTTLE_GAP_MS {
            self.throttled_since_ms = now;
            if !matches!(budget, Budget::Frames) {
                self.refuse_control(&quota);
            }
        }
        self.last_refused_ms = now;
        let over_for = Duration::from_millis(now - self.throttled_since_ms);
        if over_for >= self.ctx.settings.throttled_close_after {
            return Err(End::Flooding);
        }
        Ok(Some(rejected.retry_after))
    }

    /// Tells the client once per stretch over budget that its control frames are refused.
    #[cold]
    fn refuse_control(&self, quota: &Quota) {
        let message = format!(
            "control frames (pings, pongs) over {}/s; dropped, and reading paused",
            quota.per_second()
        );
        self.error(None, ErrorCode::RateLimited, &message);
    }

    /// Answers a frame over the rate limit with `rate_limited`, carrying its id if it has one.
    #[cold]
    pub(super) fn refuse(&self, text: &str, retry_after: Duration) {
        telemetry::rate_limited(RateScope::Client);
        let id = match protocol::decode_client_frame(text) {
            Ok(frame) => frame.id(),
            Err(err) => err.id,
        };
        let per_second = self
            .ctx
            .settings
            .client_quota
            .map_or(0, |quota| quota.per_second());
        let message = format!(
            "rate limit of {per_second} frames/s exceeded; frame dropped, retry after {} ms",
            retry_after.as_millis().max(1)
        );
        self.error(id, ErrorCode::RateLimited, &message);
    }

    /// Takes `bytes` from the client's publish budget, then from the channel's: `Some`
    /// message for the client when one of them refuses (nothing is published then).
    pub(in crate::session) fn charge_publish(
        &self,
        channel: &ChannelName,
        bytes: usize,
    ) -> Option<String> {
        let now = self.ctx.hub.clock_ns();
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        if let Some(quota) = &self.ctx.settings.publish_byte_quota
            && let Err(rejected) = self.publish_bytes.try_acquire(quota, now, bytes)
        {
            telemetry::rate_limited(RateScope::ClientPublishBytes);
            return Some(format!(
                "publishing over {} bytes/s (limits.client_publish_bytes_per_second); \
                 retry after {} ms",
                quota.per_second(),
                rejected.retry_after.as_millis().max(1)
            ));
        }
        if let Some(budget) = &self.ctx.channel_budget
            && let Err(rejected) = budget.try_acquire(channel, now, bytes)
        {
            telemetry::rate_limited(RateScope::ChannelPublishBytes);
            return Some(format!(
                "channel over {} bytes/s (limits.channel_publish_bytes_per_second); \
                 retry after {} ms",
                budget.quota().per_second(),
                rejected.retry_after.as_millis().max(1)
            ));
        }
        None
    }
}
