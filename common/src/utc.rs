//! Calendar dates of UTC timestamps (the proleptic Gregorian calendar), for the timestamps the
//! binaries print and parse.

/// A millisecond timestamp broken into its UTC date and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub milli: u64,
}

impl Utc {
    /// The date and time of `ms` since the epoch.
    pub fn of(ms: u64) -> Self {
        let secs = ms / 1000;
        let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
        Self {
            year,
            month,
            day,
            hour: secs / 3600 % 24,
            minute: secs / 60 % 60,
            second: secs % 60,
            milli: ms % 1000,
        }
    }
}

/// Days since 1970-01-01 of a date.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_across_leap_days_and_eras() {
        for days in [-800_000, -1, 0, 11_016, 19_782, 20_422, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let t = Utc::of(1_796_064_372_123);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli),
            (2026, 11, 30, 18, 46, 12, 123)
        );
    }
}
