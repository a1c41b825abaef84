//! The pull requests a consumer has open on the server, and the credit they hold: one semaphore
//! permit for each message asked for and not come yet.
//!
//! The server may serve several open pulls in turn, and ends one silently when it is full, so
//! only totals are certain: a message that comes uses one credit, whichever pull brought it; a
//! pull that expires gives back what the server says it did not bring. A pull whose end never
//! came (its answer lost with a connection) is dropped shortly after its expiry, and the credit
//! is cut to what the pulls still open could bring.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// How long after its expiry a pull is given up for lost: the server's end-of-pull status is due
/// at the expiry itself.
pub(crate) const GRACE: Duration = Duration::from_millis(250);

/// One open pull request.
#[derive(Debug)]
struct Pull {
    asked: usize,
    expires: Instant,
}

/// The consumer's open pull requests and their credit.
#[derive(Debug, Default)]
pub(crate) struct Pulls {
    /// Oldest first (they all wait as long, so also soonest to expire first).
    open: VecDeque<Pull>,
    credit: Option<OwnedSemaphorePermit>,
}

/// How a pull ended, as [`Pulls::expired`] saw it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It brought nothing.
    Empty,
    /// It brought some of what it asked for.
    Partly,
}

impl Pulls {
    /// A pull for `credit.num_permits()` messages was sent; the server keeps it until `expires`.
    pub(crate) fn opened(&mut self, credit: OwnedSemaphorePermit, expires: Instant) {
        self.open.push_back(Pull { asked: credit.num_permits(), expires });
        match &mut self.credit {
            Some(held) => held.merge(credit),
            None => self.credit = Some(credit),
        }
    }

    /// A message came: its credit, or `None` when more came than was asked for (the server's
    /// word and ours disagree; the message is given back).
    pub(crate) fn delivered(&mut self) -> Option<OwnedSemaphorePermit> {
        let credit = self.credit.as_mut()?.split(1);
        if self.outstanding() == 0 {
            // Everything asked for came: no pull is open any more.
            self.open.clear();
        }
        credit
    }

    /// The server ended the oldest pull at its expiry with `pending` messages not brought.
    pub(crate) fn expired(&mut self, pending: usize) -> Ended {
        let Some(pull) = self.open.pop_front() else {
            return Ended::Empty;
        };
        self.release(pending);
        self.cut_to_open();
        if pending >= pull.asked { Ended::Empty } else { Ended::Partly }
    }

    /// Drops the pulls whose end is overdue by [`GRACE`] at `now` (lost, or ended full without a
    /// word): how many were dropped.
    pub(crate) fn drop_overdue(&mut self, now: Instant) -> usize {
        let before = self.open.len();
        while self.open.front().is_some_and(|pull| pull.expires + GRACE <= now) {
            self.open.pop_front();
        }
        self.cut_to_open();
        before - self.open.len()
    }

    /// When the oldest open pull is overdue.
    pub(crate) fn next_overdue(&self) -> Option<Instant> {
        self.open.front().map(|pull| pull.expires + GRACE)
    }

    /// Until when a pull is open: a message given back before then could come straight back.
    pub(crate) fn open_until(&self) -> Option<Instant> {
        self.open.back().map(|pull| pull.expires)
    }

    /// Whether no pull is open: nothing more can come.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Messages asked for and not come yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.credit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn release(&mut self, messages: usize) {
        if let Some(credit) = &mut self.credit {
            drop(credit.split(messages.min(credit.num_permits())));
        }
    }

    /// The open pulls can bring at most what they asked for: credit beyond that is returned.
    fn cut_to_open(&mut self) {
        let could_come: usize = self.open.iter().map(|pull| pull.asked).sum();
        self.release(self.outstanding().saturating_sub(could_come));
        if self.open.is_empty() {
            self.credit = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    fn credit(semaphore: &Arc<Semaphore>, messages: u32) -> OwnedSemaphorePermit {
        Arc::clone(semaphore).try_acquire_many_owned(messages).expect("free credit")
    }

    #[tokio::test(start_paused = true)]
    async fn messages_use_credit_and_an_expiry_returns_what_did_not_come() {
        let semaphore = Arc::new(Semaphore::new(10));
        let mut pulls = Pulls::default();
        let now = Instant::now();
        pulls.opened(credit(&semaphore, 4), now + Duration::from_secs(1));
        pulls.opened(credit(&semaphore, 4), now + Duration::from_secs(2));
        assert_eq!(semaphore.available_permits(), 2);
        let first = pulls.delivered().expect("credit for a message");
        assert_eq!((pulls.outstanding(), first.num_permits()), (7, 1));
        // The server served the second pull too: the first ends with 1 of 4 not brought.
        assert_eq!(pulls.expired(1), Ended::Partly);
        // 6 not come, but the second pull can bring 4 at most: the credit is cut to that.
        assert_eq!(pulls.outstanding(), 4);
        assert_eq!(semaphore.available_permits(), 5);
        assert_eq!(pulls.expired(4), Ended::Empty);
        assert!(pulls.is_empty());
        assert_eq!(pulls.outstanding(), 0);
        drop(first);
        assert_eq!(semaphore.available_permits(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pull_filled_to_the_last_message_closes_and_an_extra_message_has_no_credit() {
        let semaphore = Arc::new(Semaphore::new(4));
        let mut pulls = Pulls::default();
        pulls.opened(credit(&semaphore, 2), Instant::now() + Duration::from_secs(1));
        let messages = [pulls.delivered(), pulls.delivered()];
        assert!(messages.iter().all(Option::is_some));
        assert!(pulls.is_empty(), "a full pull ends without a word from the server");
        assert!(pulls.delivered().is_none());
        assert_eq!(pulls.open_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_pull_is_dropped_after_the_grace_and_its_credit_returned() {
        let semaphore = Arc::new(Semaphore::new(8));
        let mut pulls = Pulls::default();
        let now = Instant::now();
        pulls.opened(credit(&semaphore, 4), now + Duration::from_secs(1));
        pulls.opened(credit(&semaphore, 4), now + Duration::from_secs(3));
        assert_eq!(pulls.next_overdue(), Some(now + Duration::from_secs(1) + GRACE));
        assert_eq!(pulls.open_until(), Some(now + Duration::from_secs(3)));
        assert_eq!(pulls.drop_overdue(now + Duration::from_secs(1)), 0);
        assert_eq!(pulls.drop_overdue(now + Duration::from_secs(2)), 1);
        assert_eq!((pulls.outstanding(), semaphore.available_permits()), (4, 4));
        assert_eq!(pulls.drop_overdue(now + Duration::from_secs(4)), 1);
        assert!(pulls.is_empty());
        assert_eq!(semaphore.available_permits(), 8);
    }
}
