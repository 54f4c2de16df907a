//! Time conditions of dialplan rules (`match.time`) and the time zone they are read in.
//!
//! ```toml
//! [clock]
//! timezone = "Europe/Berlin"
//!
//! [[dialplan]]
//! match = { number = "door", time = { weekdays = ["mon-fri"], hours = ["22:00-07:00"] } }
//! ```
//!
//! Each list matches when any of its entries does; the lists given must all match. Every
//! condition is read on the local date and time of the moment the call arrives: `hours =
//! ["22:00-07:00"]` with `weekdays = ["fri"]` matches Friday from midnight to 07:00 and from
//! 22:00 to midnight. A range's end is exclusive (`24:00` ends a day); an end before the start
//! wraps past midnight, a date range `12-24..01-06` past the new year.

use std::fmt;
use std::time::SystemTime;

/// A local date and time: what a [`TimeMatch`] is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// Year, e.g. 2026.
    pub year: i16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31.
    pub day: u8,
    /// 0 = Monday .. 6 = Sunday.
    pub weekday: u8,
    /// Minutes since midnight, 0..1440.
    pub minute: u16,
}

/// The configured time zone (`[clock] timezone`).
#[derive(Debug, Clone, PartialEq)]
pub struct Clock {
    /// The IANA name as written (`UTC` by default).
    pub name: String,
    tz: jiff::tz::TimeZone,
}

impl Clock {
    /// The zone named `name` (IANA tz database), or why not.
    pub fn new(name: &str) -> Result<Clock, String> {
        let tz = jiff::tz::TimeZone::get(name).map_err(|_| {
            format!("unknown time zone `{name}`: use an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`")
        })?;
        Ok(Clock {
            name: name.to_string(),
            tz,
        })
    }

    /// UTC.
    pub fn utc() -> Clock {
        Clock {
            name: "UTC".into(),
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    /// The local time of `t` in this zone (daylight saving included).
    pub fn local(&self, t: SystemTime) -> LocalTime {
        let ts = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let dt = self.tz.to_datetime(ts);
        LocalTime {
            year: dt.year(),
            month: dt.month() as u8,
            day: dt.day() as u8,
            weekday: dt.weekday().to_monday_zero_offset() as u8,
            minute: dt.hour() as u16 * 60 + dt.minute() as u16,
        }
    }
}

/// A date or a yearly date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Day {
    year: Option<i16>,
    month: u8,
    day: u8,
}

/// `match.time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeMatch {
    /// Bit `n` set: weekday `n` (0 = Monday) matches. All seven: no weekday condition.
    weekdays: u8,
    /// Minute ranges `[start, end)`; `end < start` wraps midnight. Empty: no condition.
    hours: Vec<(u16, u16)>,
    /// Date ranges (inclusive). Empty: no condition.
    dates: Vec<(Day, Day)>,
    /// As written, for logs and `podpbx ctl`.
    text: String,
}

const ALL_DAYS: u8 = 0x7f;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAYS_IN_MONTH: [u8; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl TimeMatch {
    /// Builds a condition from its three lists (each may be empty). Errors name the entry.
    pub fn new(
        weekdays: &[String],
        hours: &[String],
        dates: &[String],
    ) -> Result<TimeMatch, (usize, &'static str, String)> {
        let mut w = if weekdays.is_empty() { ALL_DAYS } else { 0 };
        for (i, s) in weekdays.iter().enumerate() {
            w |= parse_weekdays(s).map_err(|e| (i, "weekdays", e))?;
        }
        let mut h = Vec::new();
        for (i, s) in hours.iter().enumerate() {
            h.push(parse_hours(s).map_err(|e| (i, "hours", e))?);
        }
        let mut d = Vec::new();
        for (i, s) in dates.iter().enumerate() {
            d.push(parse_dates(s).map_err(|e| (i, "dates", e))?);
        }
        let mut parts = Vec::new();
        if !weekdays.is_empty() {
            parts.push(format!("weekdays {}", weekdays.join(",")));
        }
        if !hours.is_empty() {
            parts.push(format!("hours {}", hours.join(",")));
        }
        if !dates.is_empty() {
            parts.push(format!("dates {}", dates.join(",")));
        }
        Ok(TimeMatch {
            weekdays: w,
            hours: h,
            dates: d,
            text: parts.join("; "),
        })
    }

    /// Whether `t` is inside.
    pub fn matches(&self, t: &LocalTime) -> bool {
        let day_ok = self.weekdays & (1 << t.weekday) != 0;
        let hour_ok = self.hours.is_empty()
            || self.hours.iter().any(|&(a, b)| {
                if a <= b {
                    (a..b).contains(&t.minute)
                } else {
                    t.minute >= a || t.minute < b
                }
            });
        let date_ok = self.dates.is_empty() || self.dates.iter().any(|(a, b)| date_in(t, a, b));
        day_ok && hour_ok && date_ok
    }
}

impl fmt::Display for TimeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn date_in(t: &LocalTime, a: &Day, b: &Day) -> bool {
    match (a.year, b.year) {
        (Some(ya), Some(yb)) => {
            let x = (t.year, t.month, t.day);
            (ya, a.month, a.day) <= x && x <= (yb, b.month, b.day)
        }
        _ => {
            let x = (t.month, t.day);
            let (s, e) = ((a.month, a.day), (b.month, b.day));
            if s <= e {
                s <= x && x <= e
            } else {
                x >= s || x <= e
            }
        }
    }
}

fn weekday(s: &str) -> Result<u8, String> {
    let l = s.trim().to_ascii_lowercase();
    let l = l.get(..3).unwrap_or(&l);
    DAYS.iter()
        .position(|d| *d == l)
        .map(|p| p as u8)
        .ok_or_else(|| format!("`{s}` is not a weekday: use mon, tue, wed, thu, fri, sat, sun or a range like `mon-fri`"))
}

fn parse_weekdays(s: &str) -> Result<u8, String> {
    match s.split_once('-') {
        None => Ok(1 << weekday(s)?),
        Some((a, b)) => {
            let (a, b) = (weekday(a)?, weekday(b)?);
            let mut m = 0u8;
            let mut d = a;
            loop {
                m |= 1 << d;
                if d == b {
                    break;
                }
                d = (d + 1) % 7;
            }
            Ok(m)
        }
    }
}

fn hhmm(s: &str, end: bool) -> Result<u16, String> {
    let bad = || {
        format!(
            "`{s}` is not a time: use HH:MM (00:00 to {})",
            if end { "24:00" } else { "23:59" }
        )
    };
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !end)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_hours(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        format!("`{s}` is not a time range: use HH:MM-HH:MM, e.g. `08:00-18:00` or `22:00-07:00`")
    })?;
    let (a, b) = (hhmm(a, false)?, hhmm(b, true)?);
    if a == b {
        return Err(format!("`{s}` is empty: start and end are the same"));
    }
    Ok((a, b))
}

fn day(s: &str) -> Result<Day, String> {
    let bad = || format!("`{s}` is not a date: use MM-DD (every year) or YYYY-MM-DD");
    let parts: Vec<&str> = s.trim().split('-').collect();
    let (year, month, dd) = match parts.as_slice() {
        [m, d] if m.len() == 2 && d.len() == 2 => (None, *m, *d),
        [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2 => {
            (Some(y.parse::<i16>().map_err(|_| bad())?), *m, *d)
        }
        _ => return Err(bad()),
    };
    let month: u8 = month.parse().map_err(|_| bad())?;
    let dd: u8 = dd.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&month) || dd == 0 || dd > DAYS_IN_MONTH[month as usize - 1] {
        return Err(format!("`{s}` is not a valid date"));
    }
    if let Some(y) = year {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        if month == 2 && dd == 29 && !leap {
            return Err(format!(
                "`{s}` is not a valid date ({y} is not a leap year)"
            ));
        }
    }
    Ok(Day {
        year,
        month,
        day: dd,
    })
}

fn parse_dates(s: &str) -> Result<(Day, Day), String> {
    match s.split_once("..") {
        None => {
            let d = day(s)?;
            Ok((d, d))
        }
        Some((a, b)) => {
            let (a, b) = (day(a)?, day(b)?);
            match (a.year, b.year) {
                (Some(_), Some(_)) if a > b => Err(format!("`{s}` ends before it starts")),
                (Some(_), None) | (None, Some(_)) => Err(format!(
                    "`{s}`: write both ends with a year or both without"
                )),
                _ => Ok((a, b)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn tm(w: &[&str], h: &[&str], d: &[&str]) -> TimeMatch {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        TimeMatch::new(&v(w), &v(h), &v(d)).expect("valid")
    }

    fn at(year: i16, month: u8, day: u8, weekday: u8, hh: u16, mm: u16) -> LocalTime {
        LocalTime {
            year,
            month,
            day,
            weekday,
            minute: hh * 60 + mm,
        }
    }

    #[test]
    fn weekdays_hours_and_wrapping() {
        let office = tm(&["mon-fri"], &["08:00-12:00", "13:00-18:00"], &[]);
        assert!(office.matches(&at(2026, 3, 2, 0, 8, 0)));
        assert!(!office.matches(&at(2026, 3, 2, 0, 12, 0)), "end exclusive");
        assert!(office.matches(&at(2026, 3, 6, 4, 17, 59)));
        assert!(!office.matches(&at(2026, 3, 7, 5, 10, 0)), "saturday");
        let night = tm(&[], &["22:00-07:00"], &[]);
        assert!(night.matches(&at(2026, 1, 1, 3, 23, 30)));
        assert!(night.matches(&at(2026, 1, 1, 3, 0, 0)));
        assert!(night.matches(&at(2026, 1, 1, 3, 6, 59)));
        assert!(!night.matches(&at(2026, 1, 1, 3, 7, 0)));
        assert!(!night.matches(&at(2026, 1, 1, 3, 21, 59)));
        let weekend = tm(&["fri-mon"], &[], &[]);
        for (wd, want) in [
            (4, true),
            (5, true),
            (6, true),
            (0, true),
            (1, false),
            (3, false),
        ] {
            assert_eq!(weekend.matches(&at(2026, 1, 1, wd, 12, 0)), want, "{wd}");
        }
        let whole = tm(&["Sunday"], &["00:00-24:00"], &[]);
        assert!(whole.matches(&at(2026, 1, 4, 6, 23, 59)));
    }

    #[test]
    fn dates() {
        let holidays = tm(&[], &[], &["12-24..12-26", "12-31..01-01", "2026-04-03"]);
        assert!(holidays.matches(&at(2030, 12, 25, 2, 9, 0)));
        assert!(holidays.matches(&at(2030, 1, 1, 1, 9, 0)));
        assert!(holidays.matches(&at(2026, 4, 3, 4, 9, 0)));
        assert!(!holidays.matches(&at(2027, 4, 3, 5, 9, 0)));
        assert!(!holidays.matches(&at(2026, 12, 27, 6, 9, 0)));
        let span = tm(&[], &[], &["2026-07-20..2026-08-10"]);
        assert!(span.matches(&at(2026, 8, 1, 5, 0, 0)));
        assert!(!span.matches(&at(2025, 8, 1, 4, 0, 0)));
        let leap = tm(&[], &[], &["02-29"]);
        assert!(leap.matches(&at(2028, 2, 29, 1, 0, 0)));
    }

    #[test]
    fn errors_name_the_entry() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e =
            |w: &[&str], h: &[&str], d: &[&str]| TimeMatch::new(&v(w), &v(h), &v(d)).unwrap_err();
        assert_eq!(e(&["mon", "funday"], &[], &[]).0, 1);
        assert!(e(&["funday"], &[], &[]).2.contains("not a weekday"));
        assert!(e(&[], &["8-18"], &[]).2.contains("not a time"));
        assert!(e(&[], &["08:00"], &[]).2.contains("not a time range"));
        assert!(e(&[], &["24:00-07:00"], &[]).2.contains("00:00 to 23:59"));
        assert!(e(&[], &["10:00-10:00"], &[]).2.contains("empty"));
        assert!(e(&[], &["08:60-09:00"], &[]).2.contains("not a time"));
        assert!(e(&[], &[], &["02-30"]).2.contains("not a valid date"));
        assert!(e(&[], &[], &["2027-02-29"]).2.contains("not a leap year"));
        assert!(e(&[], &[], &["2026-05-01..2026-04-01"])
            .2
            .contains("ends before"));
        assert!(e(&[], &[], &["2026-05-01..06-01"]).2.contains("both ends"));
        assert!(e(&[], &[], &["24.12."]).2.contains("MM-DD"));
        assert_eq!(e(&[], &[], &["24.12."]).1, "dates");
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let berlin = Clock::new("Europe/Berlin").expect("tz");
        // 2026-03-29 00:30 UTC = 01:30 CET (Sunday); 01:30 UTC = 03:30 CEST after the change.
        let t = UNIX_EPOCH + Duration::from_secs(1_774_744_200);
        let l = berlin.local(t);
        assert_eq!(
            (l.year, l.month, l.day, l.weekday, l.minute),
            (2026, 3, 29, 6, 90)
        );
        let l = berlin.local(t + Duration::from_secs(3600));
        assert_eq!(l.minute, 3 * 60 + 30);
        let ny = Clock::new("America/New_York").expect("tz");
        let l = ny.local(t);
        assert_eq!((l.day, l.weekday, l.minute), (28, 5, 20 * 60 + 30));
        assert_eq!(
            Clock::utc().local(UNIX_EPOCH).weekday,
            3,
            "1970-01-01 was a Thursday"
        );
        let e = Clock::new("Mars/Olympus_Mons").unwrap_err();
        assert!(e.contains("unknown time zone"), "{e}");
    }
}
