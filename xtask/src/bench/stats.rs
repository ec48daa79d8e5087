//! Order statistics for per-round figures. Rounds are few (3 to 15), so medians and ranges
//! are reported rather than means and standard deviations: one disturbed round must not move
//! the headline figure.

/// Summary of a handful of per-round values.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// First and third quartile (linear interpolation between ranks).
    pub q1: f64,
    pub q3: f64,
}

impl Spread {
    /// None for an empty slice, so a missing configuration can never read as zero.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            n: v.len(),
            median: quantile(&v, 0.5),
            min: v[0],
            max: v[v.len() - 1],
            q1: quantile(&v, 0.25),
            q3: quantile(&v, 0.75),
        })
    }
}

/// `q`-quantile of sorted, non-empty `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quartiles() {
        let s = Spread::of(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            (s.median, s.min, s.max, s.q1, s.q3),
            (3.0, 1.0, 5.0, 2.0, 4.0)
        );
        let s = Spread::of(&[1.0, 2.0]).unwrap();
        assert_eq!(s.median, 1.5);
        assert!(Spread::of(&[]).is_none());
    }
}
