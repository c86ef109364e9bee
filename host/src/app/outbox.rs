//! The outbox's bookkeeping for the relay (`crate::outbox`, which owns SMTP): which
//! messages are pending and when each is due, and the durable record of every try.
//!
//! A message is pending while it has neither `sent_at` nor `failed_at`; every pending
//! message has an entry in `Space::OutboxPending` whose value is the time of its next try
//! (Unix milliseconds, big-endian; 0: now). The entry is written in the batch that queues
//! the message and changed or removed in the batch that records a try, so the index and
//! the messages always agree, and a restart finds exactly the messages still to send.

use super::{now, App, AppError};
use crate::identity::OutboxMessage;
use crate::store::{Batch, Space};
use std::sync::Arc;
use time::OffsetDateTime;

/// A pending message, as the relay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMessage {
    pub tenant: String,
    pub id: String,
    /// When it may be tried (next).
    pub due: OffsetDateTime,
}

/// The outcome of one delivery try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The SMTP server accepted the message.
    Sent,
    /// It failed; try again at this time.
    Retry { error: String, at: OffsetDateTime },
    /// It failed and will not be tried again.
    GiveUp { error: String },
}

/// Adds (or moves) the message's pending-index entry: due at `at`, or now.
pub(super) fn mark_pending(batch: &mut Batch, id: &str, at: Option<OffsetDateTime>) {
    let millis = at.map_or(0, |at| {
        u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
    });
    batch.put_raw(Space::OutboxPending, &[id], &millis.to_be_bytes());
}

fn due_at(value: &[u8]) -> OffsetDateTime {
    let millis = <[u8; 8]>::try_from(value).map_or(0, u64::from_be_bytes);
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl App {
    /// What the relay waits on: notified each time a message is queued.
    pub fn outbox_waker(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_queued.clone()
    }

    /// Every pending message of every tenant, oldest first.
    pub fn pending_messages(&self) -> Result<Vec<PendingMessage>, AppError> {
        let mut pending: Vec<PendingMessage> = self
            .store
            .outbox_pending()?
            .into_iter()
            .map(|(tenant, id, value)| PendingMessage {
                tenant,
                id,
                due: due_at(&value),
            })
            .collect();
        // Ids start with the creation time in nanoseconds, zero-padded.
        pending.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.tenant.cmp(&b.tenant)));
        Ok(pending)
    }

    /// One outbox message, for the relay (no caller: the relay acts for the operator).
    pub fn outbox_message(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<OutboxMessage>, AppError> {
        Ok(self.store.get(tenant, &[id])?)
    }

    /// Removes a pending-index entry whose message no longer exists.
    pub fn forget_pending(&self, tenant: &str, id: &str) -> Result<(), AppError> {
        let mut batch = Batch::new(tenant);
        batch.remove(Space::OutboxPending, &[id]);
        Ok(self.store.apply(&batch)?)
    }

    /// Records one delivery try of a message durably: the try is counted, and the message
    /// is marked sent, due again later, or given up on. Returns the message as stored.
    pub fn record_delivery(
        &self,
        tenant: &str,
        id: &str,
        outcome: Delivery,
    ) -> Result<OutboxMessage, AppError> {
        self.with_tenant(tenant, |slug| {
            let mut message: OutboxMessage = self
                .store
                .get(slug, &[id])?
                .ok_or_else(|| AppError::NotFound(format!("outbox message {id}")))?;
            let now = now();
            message.attempts += 1;
            message.last_attempt_at = Some(now);
            let mut batch = Batch::new(slug);
            match outcome {
                Delivery::Sent => {
                    message.sent_at = Some(now);
                    batch.remove(Space::OutboxPending, &[id]);
                }
                Delivery::Retry { error, at } => {
                    message.last_error = Some(error);
                    mark_pending(&mut batch, id, Some(at));
                }
                Delivery::GiveUp { error } => {
                    message.last_error = Some(error);
                    message.failed_at = Some(now);
                    batch.remove(Space::OutboxPending, &[id]);
                }
            }
            batch.put(&[id], &message);
            self.store.apply(&batch)?;
            Ok(message)
        })
    }

    /// Gives every pending message a pending-index entry (messages queued before the index
    /// existed have none); returns how many it added. The relay runs this once at start.
    pub fn index_pending_messages(&self) -> Result<usize, AppError> {
        let mut added = 0;
        for tenant in self.store.tenants()? {
            added += self.with_tenant(&tenant.slug, |slug| {
                let mut batch = Batch::new(slug);
                let mut count = 0;
                for message in self.store.list::<OutboxMessage>(slug, &[])? {
                    let pending = message.sent_at.is_none() && message.failed_at.is_none();
                    if pending
                        && self
                            .store
                            .get_raw(Space::OutboxPending, slug, &[&message.id])?
                            .is_none()
                    {
                        mark_pending(&mut batch, &message.id, None);
                        count += 1;
                    }
                }
                self.store.apply(&batch)?;
                Ok(count)
            })?;
        }
        Ok(added)
    }
}
