//! How a scenario's messages are shared among the producers.

/// Splits `total` messages over `producers` producers as the reference run does: each
/// producer gets `ceil(total / producers)` until the messages run out, so the last one
/// takes the rest (10,000,000 over 3 gives 3,333,334 / 3,333,334 / 3,333,332).
/// Shares always add up to `total`; with no producer there is nothing to split.
pub fn split(total: u64, producers: usize) -> Vec<u64> {
    if producers == 0 {
        return Vec::new();
    }
    let n = producers as u64;
    let share = total.div_ceil(n);
    let mut remaining = total;
    (0..producers)
        .map(|i| {
            let this = if i + 1 == producers {
                remaining
            } else {
                share.min(remaining)
            };
            remaining -= this;
            this
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_run_splits_ten_million_over_three_producers() {
        assert_eq!(split(10_000_000, 3), vec![3_333_334, 3_333_334, 3_333_332]);
    }

    #[test]
    fn shares_always_add_up_to_the_total() {
        for total in [0, 1, 2, 5, 7, 500, 30_000, 5_000, 10_000_001] {
            for producers in 1..=7 {
                let shares = split(total, producers);
                assert_eq!(shares.len(), producers);
                assert_eq!(
                    shares.iter().sum::<u64>(),
                    total,
                    "{total} over {producers}"
                );
            }
        }
    }

    #[test]
    fn fewer_messages_than_producers_leaves_the_last_ones_idle() {
        assert_eq!(split(1, 3), vec![1, 0, 0]);
        assert_eq!(split(4, 3), vec![2, 2, 0]);
    }

    #[test]
    fn one_producer_takes_everything() {
        assert_eq!(split(5_000, 1), vec![5_000]);
    }

    #[test]
    fn no_producer_gets_nothing() {
        assert!(split(10, 0).is_empty());
    }
}
