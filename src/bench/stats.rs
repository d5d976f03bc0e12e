//! Order statistics of samples: what every row reports.

/// The distribution of one row's samples, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    /// How many samples.
    pub count: usize,
    /// The median.
    pub median: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
    /// The largest sample.
    pub max: f64,
}

impl Summary {
    /// The summary of `samples` (in any order); all zeros for none.
    ///
    /// ```
    /// use swarmexec::bench::Summary;
    ///
    /// let samples: Vec<f64> = (1..=1000).map(f64::from).collect();
    /// let s = Summary::of(&samples);
    /// assert_eq!((s.count, s.median, s.p90, s.p99, s.max), (1000, 500.5, 900.1, 990.01, 1000.0));
    /// ```
    pub fn of(samples: &[f64]) -> Summary {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Summary {
            count: sorted.len(),
            median: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
            p99: percentile(&sorted, 0.99),
            p999: percentile(&sorted, 0.999),
            max: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// The `p` quantile (0 to 1) of `sorted`, interpolated between the two nearest
/// ranks (as numpy's default does); 0 for no samples.
///
/// ```
/// use swarmexec::bench::percentile;
///
/// assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
/// assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.0), 1.0);
/// assert_eq!(percentile(&[7.0], 0.99), 7.0);
/// ```
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = p.clamp(0.0, 1.0) * last as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - low as f64;
    sorted[low] + (sorted[high] - sorted[low]) * weight
}

/// A range that holds the median of the population `sorted` was drawn from with
/// about 95% confidence, from the samples' order statistics (no assumption about
/// their distribution): the ranks n/2 ± 0.98 √n. The whole range for fewer than
/// six samples.
pub(crate) fn median_interval(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    if n < 6 {
        return (
            sorted.first().copied().unwrap_or(0.0),
            sorted.last().copied().unwrap_or(0.0),
        );
    }
    let half_width = 0.98 * (n as f64).sqrt();
    let centre = n as f64 / 2.0;
    let low = (centre - half_width).floor().max(0.0) as usize;
    let high = ((centre + half_width).ceil() as usize).min(n - 1);
    (sorted[low], sorted[high])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let samples: Vec<f64> = (0..=100).map(f64::from).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.median, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        assert!((s.p999 - 99.9).abs() < 1e-9);
        assert_eq!(Summary::of(&[]), Summary::default());
        let mut shuffled = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(Summary::of(&shuffled).median, 3.0);
        shuffled.sort_by(f64::total_cmp);
        assert_eq!(median_interval(&shuffled), (1.0, 5.0));
        let many: Vec<f64> = (0..400).map(f64::from).collect();
        let (low, high) = median_interval(&many);
        assert!(
            low < 200.0 && high > 200.0 && high - low < 60.0,
            "{low}..{high}"
        );
    }
}
