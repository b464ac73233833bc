//! The order of the root group's names and where they lie in its local heap,
//! computed from the keys alone (nothing is sorted or stored per name).

/// A name in the root group: a dataset key or `sentence_to_index`, which
/// sorts after every decimal name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Name {
    Key(u64),
    SentenceToIndex,
}

/// Bytes of the local heap before key `k`'s name: the 8-byte `""` slot and
/// the names of keys `0..k`, each its digits and a NUL, padded to 8.
pub(super) fn name_offset(k: u64) -> u128 {
    let mut off: u128 = 8;
    let mut lo: u128 = 0;
    let mut hi: u128 = 10;
    let k = u128::from(k);
    for digits in 1u128.. {
        let slot = (digits + 1).div_ceil(8) * 8;
        off += (k.min(hi) - lo) * slot;
        if k <= hi {
            break;
        }
        lo = hi;
        hi *= 10;
    }
    off
}

/// How many of `1..=n` have the decimal prefix `prefix`.
fn prefix_count(prefix: u64, n: u64) -> u128 {
    let n = u128::from(n);
    let (mut first, mut next) = (u128::from(prefix), u128::from(prefix) + 1);
    let mut count = 0;
    while first <= n {
        count += next.min(n + 1) - first;
        first *= 10;
        next *= 10;
    }
    count
}

/// The `k`-th (from 0) of `1..=n` in the byte order of their decimal names;
/// `k < n`. Walks the tree of decimal prefixes, skipping whole subtrees.
pub(super) fn kth_lexicographic(mut k: u64, n: u64) -> u64 {
    let mut cur = 1u64;
    while k > 0 {
        let below = prefix_count(cur, n);
        if below <= u128::from(k) {
            k -= below as u64;
            cur += 1;
        } else {
            k -= 1;
            cur *= 10;
        }
    }
    cur
}

/// The successor of `x` among `1..=n` in name order; only called when there
/// is one.
fn next_lexicographic(x: u64, n: u64) -> u64 {
    if x <= n / 10 {
        return x * 10;
    }
    let mut x = x;
    while x % 10 == 9 || x >= n {
        x /= 10;
    }
    x + 1
}

/// The names of the root group in name order: `"0"`, then `1..count` in
/// name order, then `sentence_to_index`.
pub(super) struct NameOrder {
    count: u64,
    emitted: u64,
    last: u64,
}

impl NameOrder {
    pub(super) fn new(count: u64) -> Self {
        NameOrder {
            count,
            emitted: 0,
            last: 0,
        }
    }
}

impl Iterator for NameOrder {
    type Item = Name;

    fn next(&mut self) -> Option<Name> {
        let pos = self.emitted;
        if pos > self.count {
            return None;
        }
        self.emitted += 1;
        Some(if pos == self.count {
            Name::SentenceToIndex
        } else if pos == 0 {
            Name::Key(0)
        } else {
            self.last = if pos == 1 {
                1
            } else {
                next_lexicographic(self.last, self.count - 1)
            };
            Name::Key(self.last)
        })
    }
}
