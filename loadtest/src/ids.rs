//! Collecting the ids the producers assign, cheaply: consecutive ids extend the last
//! range, so a 5,000-message batch (ids handed out in blocks of 128) costs a few dozen
//! ranges, and the set is normalised once into the ledger's [`IdSet`].

use outbox_core::ledger::IdSet;

/// Ranges of ids in arrival order, merged into an [`IdSet`] at the end.
#[derive(Debug, Clone, Default)]
pub struct IdCollector {
    ranges: Vec<(i64, i64)>,
}

impl IdCollector {
    /// Adds one id.
    pub fn push(&mut self, id: i64) {
        if let Some(last) = self.ranges.last_mut() {
            if last.1.checked_add(1) == Some(id) {
                last.1 = id;
                return;
            }
        }
        self.ranges.push((id, id));
    }

    /// Adds every id of a set.
    pub fn extend(&mut self, set: &IdSet) {
        self.ranges.extend_from_slice(set.ranges());
    }

    /// The normalised set (sorted, merged, repeats counted once).
    pub fn finish(self) -> IdSet {
        IdSet::from_ranges(self.ranges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_collapse_into_ranges() {
        let mut c = IdCollector::default();
        for id in (257..=300).chain(1..=128).chain([5]) {
            c.push(id);
        }
        assert_eq!(c.ranges.len(), 3);
        let set = c.finish();
        assert_eq!(set.ranges(), &[(1, 128), (257, 300)]);
        assert_eq!(set.len(), 128 + 44);
    }
}
