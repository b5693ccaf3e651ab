//! RFC 3339 timestamps in the two forms the sync handles a million times in a catch-up: every
//! event read from aw-server has one to parse, every event sent upstream one to write. chrono's
//! general parser and formatter did both at 2.5 % of a 1M-event catch-up's CPU (perf, issue 9);
//! these do the common forms directly and leave everything else to chrono, which stays the
//! reference (the tests compare the two on arbitrary instants and strings).

use chrono::{DateTime, NaiveDate, Utc};

/// Nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: exactly what chrono's
/// `to_rfc3339_opts(SecondsFormat::Nanos, true)` writes. Every `i64` of nanoseconds falls in
/// the years 1677–2262, so the year always has four digits.
pub fn format_ns(ns: i64) -> String {
    format_ns_ascii(ns).iter().map(|&b| char::from(b)).collect()
}

/// [`format_ns`] on the stack, for the batch writer (no `String` per event uploaded).
pub fn format_ns_ascii(ns: i64) -> [u8; 30] {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"0000-00-00T00:00:00.000000000Z";
    // (one past the field's last digit, value, digits); every value is non-negative here.
    let fields = [
        (4, year, 4),
        (7, month, 2),
        (10, day, 2),
        (13, day_secs / 3600, 2),
        (16, day_secs / 60 % 60, 2),
        (19, day_secs % 60, 2),
        (29, nanos, 9),
    ];
    for (end, mut value, width) in fields {
        for slot in out[end - width..end].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SS[.f…]` followed by `Z` or `+00:00` — what aw-server-rust and Python
/// aw-server write — as an instant; `None` for anything else (another offset, a leap second,
/// more than nine fraction digits, an impossible date), which the caller hands to chrono.
pub fn parse_utc(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let punct = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if punct.iter().any(|&(at, c)| b.get(at) != Some(&c)) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // chrono's constructors check the date and the time (they refuse second 60: a leap second
    // goes to chrono's parser, with everything else this does not read).
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month as u32, day as u32)?;
    let mut at = 19;
    let mut nanos = 0i64;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        nanos = num(at + 1..at + 1 + digits)? * 10i64.pow(9 - digits as u32);
        at += 1 + digits;
    }
    match &b[at..] {
        b"Z" | b"+00:00" => {}
        _ => return None,
    }
    let time = date.and_hms_nano_opt(hour as u32, minute as u32, second as u32, nanos as u32)?;
    Some(time.and_utc())
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`). Not chrono's calendar, unlike [`parse_utc`]: the whole timestamp written
/// with it took 38–44 ns a call, with chrono's `from_timestamp_nanos` and its date fields 74–76 ns
/// (5M calls, release) — once per event uploaded. The tests hold it to chrono on every kind of
/// `i64`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_format(ns: i64) -> String {
        DateTime::<Utc>::from_timestamp_nanos(ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    }

    /// What the scan did before: chrono's RFC 3339 parser, then its general one.
    fn chrono_parse(s: &str) -> Option<DateTime<Utc>> {
        match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => s.parse().ok(),
        }
    }

    #[test]
    fn the_ends_of_the_range_and_the_epoch_format_as_chrono_does() {
        for ns in [
            i64::MIN,
            i64::MIN + 1,
            -1,
            0,
            1,
            951_782_400_000_000_000,
            i64::MAX,
        ] {
            assert_eq!(format_ns(ns), chrono_format(ns), "{ns}");
        }
        assert_eq!(format_ns(0), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn both_servers_forms_parse_and_others_are_left_to_chrono() {
        let at = |s| parse_utc(s).map(|t| t.timestamp_nanos_opt());
        assert_eq!(
            at("2024-02-29T23:59:59.123456789Z"),
            Some(Some(1_709_251_199_123_456_789))
        );
        assert_eq!(
            at("2024-02-29T23:59:59.123456+00:00"),
            Some(Some(1_709_251_199_123_456_000))
        );
        assert_eq!(at("1970-01-01T00:00:00Z"), Some(Some(0)));
        assert_eq!(
            at("2000-02-29T00:00:00Z"),
            Some(Some(951_782_400_000_000_000))
        );
        for other in [
            "2023-02-29T00:00:00Z",            // no such day
            "2100-02-29T00:00:00Z",            // nor this one (not a leap year)
            "2024-01-01T00:00:60Z",            // a leap second
            "2024-01-01T00:00:00.1234567891Z", // ten fraction digits
            "2024-01-01T00:00:00.Z",
            "2024-01-01T01:00:00+01:00",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00z",
            "2024-01-01T00:00:00Z ",
            "+2024-01-01T00:00:00Z",
            "２０２４-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_utc(other), None, "{other}");
        }
    }

    proptest! {
        #[test]
        fn any_instant_formats_as_chrono_does(ns in any::<i64>()) {
            prop_assert_eq!(format_ns(ns), chrono_format(ns));
        }

        #[test]
        fn what_the_fast_parser_reads_chrono_reads_the_same(
            s in "[0-9]{4}-(0[0-9]|1[0-3])-(0[0-9]|[12][0-9]|3[0-2])[Tt ]([01][0-9]|2[0-4]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]{0,11})?(Z|z|\\+00:00|-00:00|\\+01:30|)",
        ) {
            if let Some(fast) = parse_utc(&s) {
                prop_assert_eq!(Some(fast), chrono_parse(&s), "{}", s);
            }
        }

        #[test]
        fn every_instant_written_either_way_parses_back(
            ns in any::<i64>(),
            digits in 0usize..=9,
            python in any::<bool>(),
        ) {
            let t = DateTime::<Utc>::from_timestamp_nanos(ns);
            let fraction = format!("{:09}", t.timestamp_subsec_nanos());
            let text = format!(
                "{}{}{}{}",
                t.format("%Y-%m-%dT%H:%M:%S"),
                if digits == 0 { "" } else { "." },
                &fraction[..digits],
                if python { "+00:00" } else { "Z" },
            );
            prop_assert_eq!(parse_utc(&text), chrono_parse(&text), "{}", text);
            prop_assert!(parse_utc(&text).is_some(), "{}", text);
        }
    }
}
