//! The RFC 3711 §3.3.2 replay list: a sliding window of 64 packet indices below the highest
//! authenticated one, as a bitmap.

/// Replay window over packet indices (48-bit SRTP, 31-bit SRTCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    /// Highest index accepted so far.
    top: u64,
    /// Bit i set: index `top - i` was received (bit 0 is `top` itself).
    bits: u64,
    /// Nothing accepted yet.
    empty: bool,
}

pub(crate) const WINDOW: u64 = 64;

impl Window {
    pub(crate) const fn new() -> Window {
        Window {
            top: 0,
            bits: 0,
            empty: true,
        }
    }

    /// The highest index accepted (0 when empty).
    pub(crate) fn highest(&self) -> u64 {
        self.top
    }

    /// True when `index` was already received or is too old to tell. `highest` is the
    /// caller's view of the top (the same as [`Window::highest`] once anything was accepted).
    pub(crate) fn is_replay(&self, index: u64, highest: u64) -> bool {
        if self.empty {
            return false;
        }
        let top = highest.max(self.top);
        if index > top {
            return false;
        }
        let age = top - index;
        if age >= WINDOW {
            return true;
        }
        // Bits are relative to self.top.
        let rel = self.top.wrapping_sub(index);
        rel < WINDOW && self.bits & (1u64 << rel) != 0
    }

    /// Records an authenticated `index`.
    pub(crate) fn accept(&mut self, index: u64, _highest: u64) {
        if self.empty {
            self.top = index;
            self.bits = 1;
            self.empty = false;
            return;
        }
        if index > self.top {
            let shift = index - self.top;
            self.bits = if shift >= WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = index;
        } else {
            let rel = self.top - index;
            if rel < WINDOW {
                self.bits |= 1u64 << rel;
            }
        }
    }
}
