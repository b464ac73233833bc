//! Batches of a window of sentences: grouped by length so that a batch pads
//! little, bounded by a sentence count and a token budget.
//!
//! Results do not depend on how sentences are grouped (each sentence's
//! vectors are bitwise the same in any batch), only the order in which they
//! are written does; the plan is a pure function of the window's lengths and
//! the limits, so a resumed run writes exactly what an uninterrupted one
//! would.

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// At most this many sentences.
    pub max_sentences: usize,
    /// At most this many padded positions, sentences x longest length (a
    /// longer sentence alone still forms a batch).
    pub max_tokens: usize,
    /// Sort the window by length first (`false`: input order, the baseline
    /// the benchmarks compare with).
    pub group_by_length: bool,
}

/// Batches of `lengths` (one window), as index lists into it: by length
/// (stable, so equal lengths keep input order) when grouping, else in input
/// order; each batch within the limits.
pub fn plan(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    if limits.group_by_length {
        order.sort_by_key(|&i| lengths[i]);
    }
    let max_sentences = limits.max_sentences.max(1);
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0usize;
    for i in order {
        let l = lengths[i].max(1);
        let widest = longest.max(l);
        if !cur.is_empty() && (cur.len() == max_sentences || (cur.len() + 1) * widest > limits.max_tokens) {
            batches.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(l);
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

/// Padded positions of a plan (what the forward pass computes) and real
/// tokens: their ratio is the padding overhead.
pub fn padded_positions(lengths: &[usize], batches: &[Vec<usize>]) -> usize {
    batches
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_sentences: 3,
        max_tokens: 12,
        group_by_length: true,
    };

    #[test]
    fn every_sentence_once_within_limits() {
        let lengths = [5, 1, 9, 2, 2, 30, 0, 4, 4, 4, 7];
        for group in [true, false] {
            let limits = BatchLimits {
                group_by_length: group,
                ..LIMITS
            };
            let batches = plan(&lengths, limits);
            let mut seen: Vec<usize> = batches.concat();
            seen.sort();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
            for b in &batches {
                let widest = b.iter().map(|&i| lengths[i].max(1)).max().unwrap();
                assert!(b.len() <= 3);
                assert!(b.len() == 1 || b.len() * widest <= 12, "{b:?}");
            }
        }
    }

    #[test]
    fn grouping_pads_less_and_is_stable() {
        let lengths = [40, 3, 41, 4, 39, 5, 3, 42];
        let limits = BatchLimits {
            max_sentences: 2,
            max_tokens: 1000,
            group_by_length: true,
        };
        let grouped = plan(&lengths, limits);
        let plain = plan(
            &lengths,
            BatchLimits {
                group_by_length: false,
                ..limits
            },
        );
        assert_eq!(grouped, vec![vec![1, 6], vec![3, 5], vec![4, 0], vec![2, 7]]);
        assert!(padded_positions(&lengths, &grouped) < padded_positions(&lengths, &plain));
        assert_eq!(plan(&[], limits), Vec::<Vec<usize>>::new());
    }
}
