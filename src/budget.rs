//! A bound on the memory that in-flight requests hold for their state (K/V caches, und contexts,
//! activation arenas), shared by every request of one [`crate::engine::Engine`].
//!
//! Each request reserves its estimate (see [`crate::model::Model::chat_state_bytes`] and
//! [`crate::model::Model::image_state_bytes`]) before it computes anything and
//! gives it back when it ends, whatever the outcome. A request whose estimate alone exceeds the limit can
//! never run and is refused at once; one that fits alone but not beside the requests already running
//! waits for them (or, with [`OverLimit::Reject`], is refused), so the engine stays usable either way.

use std::sync::{Condvar, Mutex};

/// What a request that fits the limit alone, but not beside those running, does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverLimit {
    /// Wait until enough running requests have finished.
    #[default]
    Wait,
    /// Fail at once with [`BudgetError::Busy`].
    Reject,
}

/// Why a request got no memory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The request alone needs more than the limit.
    #[error(
        "the request needs about {} of state, over the engine's memory limit of {}; \
         ask for fewer tokens or a smaller image, or raise the limit",
        human(*needed),
        human(*limit)
    )]
    TooLarge {
        /// The request's estimated state, in bytes.
        needed: u64,
        /// The engine's memory limit, in bytes.
        limit: u64,
    },
    /// Running requests hold too much of the limit now ([`OverLimit::Reject`]).
    #[error(
        "the request needs about {} of state but only {} of the {} memory limit is free now; \
         retry when running requests finish",
        human(*needed),
        human(limit - in_use),
        human(*limit)
    )]
    Busy {
        /// The request's estimated state, in bytes.
        needed: u64,
        /// Bytes the running requests hold now.
        in_use: u64,
        /// The engine's memory limit, in bytes.
        limit: u64,
    },
}

/// `bytes` in the largest binary unit that keeps it at least 1, for messages.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..0x10_0000 => format!("{:.1} KiB", b / 1024.0),
        0x10_0000..0x4000_0000 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        _ => format!("{:.2} GiB", b / (1u64 << 30) as f64),
    }
}

/// The engine's request memory: a limit (none = unbounded) and what running requests hold.
///
/// # Examples
///
/// On its own: reservations hold bytes until they drop.
///
/// ```
/// use hbridge::budget::{BudgetError, MemoryBudget, OverLimit};
/// let budget = MemoryBudget::new(Some(1000), OverLimit::Reject);
/// let first = budget.reserve(600)?;
/// assert_eq!(budget.in_use(), 600);
/// // Fits the limit alone, but not beside `first`: refused at once under `Reject` (`Wait` would block).
/// assert!(matches!(budget.reserve(600), Err(BudgetError::Busy { in_use: 600, .. })));
/// // Can never fit.
/// assert!(matches!(budget.reserve(2000), Err(BudgetError::TooLarge { .. })));
/// drop(first);
/// assert_eq!(budget.in_use(), 0);
/// assert_eq!(budget.reserve(600)?.bytes(), 600);
/// # Ok::<(), BudgetError>(())
/// ```
///
/// In an [`Engine`](crate::engine::Engine), set through
/// [`EngineOptions::memory_limit`](crate::engine::EngineOptions::memory_limit):
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use hbridge::chat::{ChatError, ChatRequest};
/// use hbridge::engine::{Engine, EngineOptions};
/// use hbridge::model::RunError;
/// # let dir = std::env::temp_dir().join(format!("hbridge-doc-budget-{}", std::process::id()));
/// # let tiny = hbridge::presets::preset("tiny").unwrap();
/// # hbridge::init::write_checkpoint(&dir, &tiny, 0, hbridge::init::WeightDType::BF16, true)?;
/// // `dir` holds a checkpoint (here the built-in tiny model with random weights).
/// let engine = Engine::load(&dir, &EngineOptions::cpu().memory_limit(1024))?;
/// assert_eq!(engine.memory_budget().limit(), Some(1024));
/// // A chat's K/V cache and prefill arena need far more than 1 KiB: refused before any compute.
/// let err = engine
///     .chat("Hello", &ChatRequest::new().max_tokens(8), |_, _| std::ops::ControlFlow::Continue(()))
///     .unwrap_err();
/// assert!(matches!(err, ChatError::Model(RunError::Memory(_))), "{err}");
/// assert_eq!(engine.memory_budget().in_use(), 0);
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct MemoryBudget {
    limit: Option<u64>,
    policy: OverLimit,
    in_use: Mutex<u64>,
    freed: Condvar,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (`None`: every request runs at once).
    pub fn new(limit: Option<u64>, policy: OverLimit) -> Self {
        MemoryBudget {
            limit,
            policy,
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// The limit in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Bytes reserved by running requests now.
    pub fn in_use(&self) -> u64 {
        *self.in_use.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `bytes` until the returned guard drops; waits or refuses as the policy says.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation<'_>, BudgetError> {
        let Some(limit) = self.limit else {
            return Ok(Reservation {
                budget: self,
                bytes: 0,
            });
        };
        if bytes > limit {
            return Err(BudgetError::TooLarge {
                needed: bytes,
                limit,
            });
        }
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        while *in_use + bytes > limit {
            if self.policy == OverLimit::Reject {
                return Err(BudgetError::Busy {
                    needed: bytes,
                    in_use: *in_use,
                    limit,
                });
            }
            in_use = self.freed.wait(in_use).unwrap_or_else(|e| e.into_inner());
        }
        *in_use += bytes;
        Ok(Reservation {
            budget: self,
            bytes,
        })
    }
}

/// Memory held by one running request; given back on drop (also when the request fails or panics).
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a MemoryBudget,
    bytes: u64,
}

impl Reservation<'_> {
    /// The bytes this reservation holds (0 without a limit).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut in_use = self.budget.in_use.lock().unwrap_or_else(|e| e.into_inner());
            *in_use -= self.bytes;
            self.budget.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn too_large_is_refused_and_the_budget_stays_usable() {
        let b = MemoryBudget::new(Some(100), OverLimit::Wait);
        assert_eq!(
            b.reserve(101).unwrap_err(),
            BudgetError::TooLarge {
                needed: 101,
                limit: 100
            }
        );
        let r = b.reserve(100).unwrap();
        assert_eq!((r.bytes(), b.in_use()), (100, 100));
        drop(r);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn reject_policy_refuses_while_busy() {
        let b = MemoryBudget::new(Some(100), OverLimit::Reject);
        let r = b.reserve(60).unwrap();
        let e = b.reserve(60).unwrap_err();
        assert!(matches!(e, BudgetError::Busy { in_use: 60, .. }), "{e}");
        assert!(e.to_string().contains("only 40 bytes"), "{e}");
        drop(r);
        b.reserve(60).unwrap();
    }

    #[test]
    fn wait_policy_waits_for_release() {
        let b = Arc::new(MemoryBudget::new(Some(100), OverLimit::Wait));
        let first = b.reserve(70).unwrap();
        let b2 = b.clone();
        let waiter = std::thread::spawn(move || {
            let r = b2.reserve(70).unwrap();
            r.bytes()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the second request must wait");
        assert_eq!(b.in_use(), 70);
        drop(first);
        assert_eq!(waiter.join().unwrap(), 70);
        assert_eq!(b.in_use(), 0);
    }

    #[test]
    fn no_limit_reserves_nothing() {
        let b = MemoryBudget::new(None, OverLimit::Reject);
        let r = b.reserve(u64::MAX).unwrap();
        assert_eq!((r.bytes(), b.in_use()), (0, 0));
    }
}
