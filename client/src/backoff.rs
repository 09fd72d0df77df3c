//! Exponential backoff with jitter between retries.

use std::time::Duration;

use rand::Rng;

/// Delays `initial, 2*initial, 4*initial, ...` capped at `max`, each drawn uniformly from
/// `[d/2, d]` so that clients retrying after the same failure spread out.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial.min(max),
            max,
        }
    }

    /// The next delay before jitter.
    pub(crate) fn next_base(&mut self) -> Duration {
        let current = self.next;
        self.next = current.saturating_mul(2).min(self.max);
        current
    }

    /// The next delay with jitter applied.
    pub(crate) fn next_delay(&mut self) -> Duration {
        jitter(self.next_base(), &mut rand::thread_rng())
    }
}

fn jitter(base: Duration, rng: &mut impl Rng) -> Duration {
    let half = base / 2;
    if half.is_zero() {
        return base;
    }
    half + rng.gen_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(20 * MS, 500 * MS);
        let seq: Vec<_> = (0..8).map(|_| backoff.next_base().as_millis()).collect();
        assert_eq!(seq, [20, 40, 80, 160, 320, 500, 500, 500]);
    }

    #[test]
    fn initial_above_cap_is_capped() {
        let mut backoff = Backoff::new(2000 * MS, 500 * MS);
        assert_eq!(backoff.next_base(), 500 * MS);
    }

    #[test]
    fn jitter_stays_within_half_and_full_delay() {
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let d = jitter(100 * MS, &mut rng);
            assert!(d >= 50 * MS && d <= 100 * MS, "{d:?}");
        }
        assert_eq!(jitter(Duration::ZERO, &mut rng), Duration::ZERO);
        let mut backoff = Backoff::new(20 * MS, 500 * MS);
        for _ in 0..20 {
            let d = backoff.next_delay();
            assert!(d >= 10 * MS && d <= 500 * MS, "{d:?}");
        }
    }
}
