//! The `stats` of a `[[sensor]]` rule: which window statistics a sensor
//! reports, and the one table of their names.

use toml::Spanned;

use super::diag::{suggest, Cx};
pub use crate::policy::StatSet;

/// One statistic a rule may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stat {
    /// Always reported; naming it changes nothing.
    Count,
    Min,
    Max,
    Mean,
    Std,
    Rms,
    P2p,
    Crest,
    Skewness,
    Kurtosis,
    /// An index into [`StatSet::QUANTILES`].
    Percentile(usize),
    Slope,
    FirstLast,
}

/// Every name a rule may list, in the order hints list them and `check`
/// prints them, with the statistic it means and whether `check` prints it
/// (`first` and `last` are other names of `first_last`).
const STATS: &[(&str, Stat, bool)] = &[
    ("count", Stat::Count, true),
    ("min", Stat::Min, true),
    ("max", Stat::Max, true),
    ("mean", Stat::Mean, true),
    ("std", Stat::Std, true),
    ("rms", Stat::Rms, true),
    ("p2p", Stat::P2p, true),
    ("crest", Stat::Crest, true),
    ("skewness", Stat::Skewness, true),
    ("kurtosis", Stat::Kurtosis, true),
    (StatSet::QUANTILES[0].1, Stat::Percentile(0), true),
    (StatSet::QUANTILES[1].1, Stat::Percentile(1), true),
    (StatSet::QUANTILES[2].1, Stat::Percentile(2), true),
    (StatSet::QUANTILES[3].1, Stat::Percentile(3), true),
    ("slope", Stat::Slope, true),
    ("first", Stat::FirstLast, false),
    ("last", Stat::FirstLast, false),
    ("first_last", Stat::FirstLast, true),
];

/// How a rule names its statistics (the type is the core's, in `policy.rs`).
impl StatSet {
    /// The names, as a rule lists them.
    pub fn names(&self) -> Vec<&'static str> {
        STATS
            .iter()
            .filter(|(_, stat, printed)| *printed && self.has(*stat))
            .map(|(name, _, _)| *name)
            .collect()
    }

    fn has(&self, stat: Stat) -> bool {
        match stat {
            Stat::Count => true,
            Stat::Min => self.min,
            Stat::Max => self.max,
            Stat::Mean => self.mean,
            Stat::Std => self.std,
            Stat::Rms => self.rms,
            Stat::P2p => self.p2p,
            Stat::Crest => self.crest,
            Stat::Skewness => self.skewness,
            Stat::Kurtosis => self.kurtosis,
            Stat::Percentile(k) => self.percentiles[k],
            Stat::Slope => self.slope,
            Stat::FirstLast => self.first_last,
        }
    }

    fn turn_on(&mut self, stat: Stat) {
        let flag = match stat {
            Stat::Count => return,
            Stat::Min => &mut self.min,
            Stat::Max => &mut self.max,
            Stat::Mean => &mut self.mean,
            Stat::Std => &mut self.std,
            Stat::Rms => &mut self.rms,
            Stat::P2p => &mut self.p2p,
            Stat::Crest => &mut self.crest,
            Stat::Skewness => &mut self.skewness,
            Stat::Kurtosis => &mut self.kurtosis,
            Stat::Percentile(k) => &mut self.percentiles[k],
            Stat::Slope => &mut self.slope,
            Stat::FirstLast => &mut self.first_last,
        };
        *flag = true;
    }
}

impl Cx<'_> {
    pub(super) fn stats(&mut self, list: &Option<Spanned<Vec<String>>>) -> StatSet {
        let Some(list) = list else {
            return StatSet::DEFAULT;
        };
        let mut stats = StatSet::NONE;
        for name in list.get_ref() {
            match STATS.iter().find(|(n, _, _)| n == name) {
                Some((_, stat, _)) => stats.turn_on(*stat),
                None => {
                    let known: Vec<&str> = STATS.iter().map(|(n, _, _)| *n).collect();
                    let hint = suggest(name, &known, || {
                        format!("known statistics: {}", known.join(", "))
                    });
                    self.at(
                        list.span(),
                        format!("unknown statistic `{name}`"),
                        Some(hint),
                    );
                }
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statistic_has_a_printed_name() {
        let all = StatSet::EVERYTHING.names();
        assert_eq!(all.len(), STATS.iter().filter(|(_, _, p)| *p).count());
        let mut set = StatSet::NONE;
        for (_, stat, _) in STATS {
            set.turn_on(*stat);
        }
        assert_eq!(set, StatSet::EVERYTHING);
    }
}
