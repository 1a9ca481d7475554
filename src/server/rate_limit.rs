//! Per-connection token buckets for message and byte rate limits.

/// A token bucket refilled continuously at `rate` tokens per second up to
/// `burst`. Time is passed in (milliseconds), keeping it testable.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(burst: f64, now_ms: u64) -> Self {
        TokenBucket {
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes `cost` tokens if available.
    pub fn try_take(&mut self, cost: f64, rate: f64, burst: f64, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// The configured limits (0 = off).
#[derive(Clone, Copy, Debug, Default)]
pub struct RateLimits {
    pub messages_per_sec: f64,
    pub burst: f64,
    pub bytes_per_sec: f64,
}

impl RateLimits {
    pub fn enabled(&self) -> bool {
        self.messages_per_sec > 0.0 || self.bytes_per_sec > 0.0
    }
}

/// Both buckets of one connection.
#[derive(Clone, Copy, Debug)]
pub struct RateLimiter {
    messages: TokenBucket,
    bytes: TokenBucket,
}

impl RateLimiter {
    pub fn new(limits: &RateLimits, now_ms: u64) -> Self {
        RateLimiter {
            messages: TokenBucket::new(limits.burst, now_ms),
            // One second's worth of bytes as the byte burst.
            bytes: TokenBucket::new(limits.bytes_per_sec, now_ms),
        }
    }

    /// Whether one message of `len` bytes is within the limits.
    pub fn allow(&mut self, limits: &RateLimits, len: usize, now_ms: u64) -> bool {
        let msg_ok = limits.messages_per_sec <= 0.0
            || self
                .messages
                .try_take(1.0, limits.messages_per_sec, limits.burst, now_ms);
        let bytes_ok = limits.bytes_per_sec <= 0.0
            || self.bytes.try_take(
                len as f64,
                limits.bytes_per_sec,
                limits.bytes_per_sec,
                now_ms,
            );
        msg_ok && bytes_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let l = RateLimits {
            messages_per_sec: 10.0,
            burst: 5.0,
            bytes_per_sec: 0.0,
        };
        let mut r = RateLimiter::new(&l, 0);
        for _ in 0..5 {
            assert!(r.allow(&l, 1, 0));
        }
        assert!(!r.allow(&l, 1, 0));
        // 100 ms later one more token.
        assert!(r.allow(&l, 1, 100));
        assert!(!r.allow(&l, 1, 100));
        // Never more than the burst after a long pause.
        let mut ok = 0;
        for _ in 0..100 {
            if r.allow(&l, 1, 100_000) {
                ok += 1;
            }
        }
        assert_eq!(ok, 5);
    }

    #[test]
    fn byte_limit() {
        let l = RateLimits {
            messages_per_sec: 0.0,
            burst: 0.0,
            bytes_per_sec: 1000.0,
        };
        let mut r = RateLimiter::new(&l, 0);
        assert!(r.allow(&l, 600, 0));
        assert!(!r.allow(&l, 600, 0));
        assert!(r.allow(&l, 600, 500));
    }
}
