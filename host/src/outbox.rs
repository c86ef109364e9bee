//! The outbox relay: sends queued emails (set-password and reset links) over SMTP.
//!
//! One task per process drains every tenant's pending messages, oldest first, one at a
//! time. Each try is recorded durably before the next begins: sent (`sent_at`), due again
//! after a backoff (`attempts`, `last_error`), or given up on after `smtp.max_attempts`
//! tries (`failed_at`). Pending messages are found through the store, so a message
//! acknowledged before a crash is sent after the restart. Delivery is at least once: a
//! crash between the server's acceptance and the durable record sends that message again
//! on restart (with the same `Message-ID`); otherwise a sent message is never sent twice.
//!
//! The relay is woken when a message is queued and also looks every
//! `smtp.poll_interval_ms`. A reply from the server (4xx, 5xx) counts against that message
//! only; a failure to talk to the server at all (connection, TLS, timeout) also holds the
//! whole relay until that message's retry, so a server that is down does not use up every
//! message's tries. Logs name messages by tenant and id, never by content: the body holds
//! a one-time link.
//!
//! The only module naming lettre.

use crate::app::{App, Delivery, PendingMessage};
use crate::config::Config;
use crate::identity::OutboxMessage;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait between two tries of a message.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// A relay configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Config(String),
}

/// The outbox relay, configured and not yet running.
pub struct Relay {
    app: Arc<App>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    poll_interval: Duration,
    max_attempts: u32,
    backoff: Duration,
}

/// A running relay.
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Stops the relay after the message it is sending, if any, and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Relay {
    /// The relay `config` describes; `None` when no SMTP URL is configured (messages then
    /// stay in the outbox). Refuses an unusable URL or `from`, a missing `public_url`
    /// (links in mails must be absolute), and zero attempts or poll interval.
    pub fn new(app: Arc<App>, config: &Config) -> Result<Option<Relay>, RelayError> {
        let smtp = &config.smtp;
        let Some(url) = smtp.url().map_err(|e| RelayError::Config(e.to_string()))? else {
            return Ok(None);
        };
        let from = smtp.from.as_deref().ok_or_else(|| {
            RelayError::Config(
                "smtp.from is required with an SMTP URL: set it to an address like Gatehouse <no-reply@example.com>".into(),
            )
        })?;
        let from: Mailbox = from.parse().map_err(|e| {
            RelayError::Config(format!(
                "smtp.from {from:?} is not an address ({e}): use one like Gatehouse <no-reply@example.com>"
            ))
        })?;
        match config.public_url() {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(RelayError::Config(
                    "public_url is required with an SMTP URL: links in mails are built on it (e.g. https://id.example.com)".into(),
                ))
            }
            Err(e) => return Err(RelayError::Config(e.to_string())),
        }
        if smtp.max_attempts == 0 || smtp.poll_interval_ms == 0 {
            return Err(RelayError::Config(
                "smtp.max_attempts and smtp.poll_interval_ms must be at least 1".into(),
            ));
        }
        // The URL is never echoed: it may carry a password.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|e| {
                RelayError::Config(format!(
                    "the SMTP URL is not usable ({e}): use smtp://host:port, smtp://host?tls=required or smtps://user:password@host"
                ))
            })?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        Ok(Some(Relay {
            app,
            transport,
            from,
            poll_interval: Duration::from_millis(smtp.poll_interval_ms),
            max_attempts: smtp.max_attempts,
            backoff: Duration::from_millis(smtp.backoff_ms),
        }))
    }

    /// Runs the relay on the current tokio runtime until [`RelayHandle::stop`].
    pub fn spawn(self) -> RelayHandle {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(stopped));
        RelayHandle { stop, task }
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let waker = self.app.outbox_waker();
        match self.app.index_pending_messages() {
            Ok(0) => {}
            Ok(added) => tracing::info!(added, "outbox: indexed pending messages"),
            Err(e) => tracing::error!(error = %e, "outbox: cannot index pending messages"),
        }
        tracing::info!("outbox relay running");
        // While set, the server could not be reached: nothing is tried before then.
        let mut hold: Option<OffsetDateTime> = None;
        loop {
            let next = match self.pass(&mut hold, &stopped).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "outbox: cannot read pending messages");
                    None
                }
            };
            if *stopped.borrow() {
                break;
            }
            let mut wait = self.poll_interval;
            if let Some(next) = hold.or(next) {
                wait = wait.min(until(next));
            }
            tokio::select! {
                _ = waker.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => break,
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// Tries every due message once, oldest first; returns when the earliest message not
    /// yet due will be.
    async fn pass(
        &self,
        hold: &mut Option<OffsetDateTime>,
        stopped: &watch::Receiver<bool>,
    ) -> Result<Option<OffsetDateTime>, crate::app::AppError> {
        if hold.is_some_and(|until| until > OffsetDateTime::now_utc()) {
            return Ok(None);
        }
        *hold = None;
        let mut next: Option<OffsetDateTime> = None;
        for pending in self.app.pending_messages()? {
            if *stopped.borrow() {
                break;
            }
            let now = OffsetDateTime::now_utc();
            if pending.due > now {
                next = Some(next.map_or(pending.due, |n| n.min(pending.due)));
                continue;
            }
            match self.attempt(&pending).await {
                Attempt::Done => {}
                Attempt::Later(at) => next = Some(next.map_or(at, |n| n.min(at))),
                Attempt::Hold(at) => {
                    *hold = Some(at);
                    return Ok(Some(at));
                }
            }
        }
        Ok(next)
    }

    /// One try of one message, recorded.
    async fn attempt(&self, pending: &PendingMessage) -> Attempt {
        let PendingMessage { tenant, id, .. } = pending;
        let message = match self.app.outbox_message(tenant, id) {
            Ok(Some(message)) => message,
            Ok(None) => {
                tracing::warn!(tenant, id, "outbox: pending message is gone; forgetting it");
                if let Err(e) = self.app.forget_pending(tenant, id) {
                    tracing::error!(tenant, id, error = %e, "outbox: cannot forget message");
                }
                return Attempt::Done;
            }
            Err(e) => {
                tracing::error!(tenant, id, error = %e, "outbox: cannot read message");
                return Attempt::Hold(later(self.backoff));
            }
        };
        let attempts = message.attempts + 1;
        let (outcome, attempt) = match self.email(&message) {
            Err(error) => (Delivery::GiveUp { error }, Attempt::Done),
            Ok(email) => match self.transport.send(email).await {
                Ok(_) => (Delivery::Sent, Attempt::Done),
                Err(e) => {
                    let error = e.to_string();
                    if attempts >= self.max_attempts {
                        (Delivery::GiveUp { error }, Attempt::Done)
                    } else {
                        let at = later(backoff(self.backoff, attempts));
                        let attempt = if e.is_transient() || e.is_permanent() {
                            Attempt::Later(at)
                        } else {
                            Attempt::Hold(at)
                        };
                        (Delivery::Retry { error, at }, attempt)
                    }
                }
            },
        };
        match &outcome {
            Delivery::Sent => tracing::info!(tenant, id, attempts, "outbox: message sent"),
            Delivery::Retry { error, at } => {
                tracing::warn!(tenant, id, attempts, error = %error, retry_in_ms = until(*at).as_millis() as u64, "outbox: message not sent; will retry")
            }
            Delivery::GiveUp { error } => {
                tracing::error!(tenant, id, attempts, error = %error, "outbox: message not sent; giving up")
            }
        }
        if let Err(e) = self.app.record_delivery(tenant, id, outcome) {
            // Not recorded: the message stays pending and is tried again (a sent one may
            // then be sent twice).
            tracing::error!(tenant, id, error = %e, "outbox: cannot record the delivery try");
            return Attempt::Hold(later(self.backoff));
        }
        attempt
    }

    /// The email of a message: plain text, from `smtp.from` to the user; an error (the
    /// message can never be sent) when the recipient is not an address SMTP takes.
    fn email(&self, message: &OutboxMessage) -> Result<Message, String> {
        let to: Mailbox = message
            .to
            .parse()
            .map_err(|e| format!("the recipient address is not usable: {e}"))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&message.subject)
            .message_id(Some(format!(
                "<{}@{}>",
                message.id,
                self.from.email.domain()
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(message.body.clone())
            .map_err(|e| format!("the message cannot be built: {e}"))
    }
}

enum Attempt {
    /// Sent, given up on, or gone.
    Done,
    /// Failed; due again at this time.
    Later(OffsetDateTime),
    /// The server (or the store) could not be used: hold the relay until then.
    Hold(OffsetDateTime),
}

/// The wait after the `attempts`-th failed try: `base`, doubled per further failure,
/// at most an hour.
fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

fn later(wait: Duration) -> OffsetDateTime {
    OffsetDateTime::now_utc() + wait
}

fn until(at: OffsetDateTime) -> Duration {
    Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
}

/// Starts the relay `config` describes, if any (see [`Relay::new`]).
pub fn start(app: Arc<App>, config: &Config) -> Result<Option<RelayHandle>, RelayError> {
    Ok(Relay::new(app, config)?.map(Relay::spawn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(5);
        assert_eq!(backoff(base, 1), Duration::from_secs(5));
        assert_eq!(backoff(base, 2), Duration::from_secs(10));
        assert_eq!(backoff(base, 4), Duration::from_secs(40));
        assert_eq!(backoff(base, 30), MAX_BACKOFF);
        assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
    }
}
