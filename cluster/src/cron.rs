//! Cron schedules as Kubernetes reads a CronJob's `spec.schedule` (robfig/cron v3's
//! `ParseStandard`): five fields — minute, hour, day of month, month, day of week — each
//! `*` (or `?`), a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n` (from `a` to the
//! field's end), or a comma-separated list of those, with the names `JAN`..`DEC` and
//! `SUN`..`SAT` (any case); or one of the descriptors `@yearly` (`@annually`), `@monthly`,
//! `@weekly`, `@daily` (`@midnight`), `@hourly` and `@every <duration>` (Go's duration
//! syntax, whole seconds, at least one). Day of week runs 0..6 from Sunday: Kubernetes
//! rejects 7, and so does this parser. Error messages are robfig's, as Kubernetes shows
//! them in its 422.
//!
//! Next times are computed in the CronJob's time zone step by step as robfig computes
//! them, so that they agree with Kubernetes' at the edges too: a day matches when both the
//! day-of-month and the day-of-week field match if either of them is `*` (`?`, `*/1`),
//! and when either matches otherwise (standard cron's OR); a time inside a daylight-saving
//! gap does not happen that day, and one inside a repeated hour happens twice; a schedule
//! with no time in the next five years (`0 0 30 2 *`) has no next time.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Span, Timestamp, Zoned};

/// The bit a field gets when it was written `*` or `?`: for the day-of-month and
/// day-of-week fields it turns standard cron's OR into an AND.
const STAR: u64 = 1 << 63;

/// A field's range and the names it accepts.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: u64,
    max: u64,
    names: &'static [(&'static str, u64)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// Why a schedule or a time zone is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule is the empty string.
    #[error("empty spec string")]
    Empty,
    /// Not five fields.
    #[error("expected exactly 5 fields, found {found}: [{fields}]")]
    FieldCount {
        /// How many there are.
        found: usize,
        /// The fields, space separated.
        fields: String,
    },
    /// A field that does not parse (robfig's message).
    #[error("{0}")]
    Field(String),
    /// An `@` word that is not a descriptor.
    #[error("unrecognized descriptor: {0}")]
    Descriptor(String),
    /// `@every` with a bad duration.
    #[error("failed to parse duration {descriptor}: time: {why}")]
    Duration {
        /// The whole descriptor.
        descriptor: String,
        /// Go's complaint, without its `time: ` prefix.
        why: String,
    },
    /// A `TZ=` or `CRON_TZ=` prefix, which Kubernetes only tolerates on old objects.
    #[error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")]
    TimeZoneInSchedule,
    /// `spec.timeZone` is the empty string.
    #[error("timeZone must be nil or non-empty string")]
    EmptyTimeZone,
    /// `spec.timeZone` is `Local`: the controller's zone, which Kubernetes does not accept.
    #[error("timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones")]
    LocalTimeZone,
    /// `spec.timeZone` names no zone of the time zone database.
    #[error("unknown time zone {0}")]
    UnknownTimeZone(String),
}

fn field_error(message: String) -> ScheduleError {
    ScheduleError::Field(message)
}

/// A parsed schedule, in the time zone its times are computed in (UTC unless set).
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: TimeZone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Five fields (or a descriptor that means five fields).
    Fields(Fields),
    /// `@every`: a constant delay, in whole seconds (at least one).
    Every(i64),
}

/// One bit per allowed value, plus [`STAR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

impl Schedule {
    /// Parses a schedule as Kubernetes' `cron.ParseStandard` does; its times are in UTC
    /// until [`Schedule::in_time_zone`].
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        // Kubernetes rejects both prefixes in new schedules; Kairn never had old ones.
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err(ScheduleError::TimeZoneInSchedule);
        }
        let kind = if spec.starts_with('@') {
            descriptor(spec)?
        } else {
            let fields: Vec<&str> = spec.split_whitespace().collect();
            let [minute, hour, dom, month, dow] = fields[..] else {
                return Err(ScheduleError::FieldCount {
                    found: fields.len(),
                    fields: fields.join(" "),
                });
            };
            Kind::Fields(Fields {
                minute: field(minute, MINUTES)?,
                hour: field(hour, HOURS)?,
                dom: field(dom, DAYS_OF_MONTH)?,
                month: field(month, MONTHS)?,
                dow: field(dow, DAYS_OF_WEEK)?,
            })
        };
        Ok(Schedule {
            kind,
            tz: TimeZone::UTC,
        })
    }

    /// The schedule of a CronJob: `schedule` in `time_zone` (UTC when `None`).
    pub fn for_cronjob(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let parsed = Schedule::parse(schedule)?;
        Ok(match time_zone {
            Some(name) => parsed.in_time_zone(time_zone_named(name)?),
            None => parsed,
        })
    }

    /// The same schedule with its times computed in `tz`.
    pub fn in_time_zone(self, tz: TimeZone) -> Schedule {
        Schedule { tz, ..self }
    }

    /// The time zone the schedule's times are computed in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The first time of the schedule strictly after `after` (robfig's `Next`), or `None`
    /// when there is none within five years.
    pub fn next(&self, after: Timestamp) -> Option<Timestamp> {
        match self.kind {
            Kind::Every(seconds) => floor_second(after).checked_add(SignedDuration::from_secs(seconds)).ok(),
            Kind::Fields(f) => f.next(after, &self.tz),
        }
    }
}

/// A time zone for `spec.timeZone`, checked as Kubernetes' validateTimeZone checks it.
pub fn time_zone_named(name: &str) -> Result<TimeZone, ScheduleError> {
    if name.is_empty() {
        return Err(ScheduleError::EmptyTimeZone);
    }
    let unknown = || ScheduleError::UnknownTimeZone(name.to_string());
    // IANA's naming rules (with the digits and `+` of legacy names): this also keeps
    // paths out of the zoneinfo lookup.
    let valid_part = |p: &str| {
        (1..=14).contains(&p.len())
            && p != "."
            && p != ".."
            && !p.starts_with('-')
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
    };
    if !name.split('/').all(valid_part) {
        return Err(unknown());
    }
    if name.eq_ignore_ascii_case("Local") {
        return Err(ScheduleError::LocalTimeZone);
    }
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    let tz = TimeZone::get(name).map_err(|_| unknown())?;
    // The database looks names up ignoring case; Go's (and so Kubernetes') does not.
    if tz.iana_name().is_some_and(|n| n != name) {
        return Err(unknown());
    }
    Ok(tz)
}

/// Bits `start..=end` by `step`.
fn bits(start: u64, end: u64, step: u64) -> u64 {
    (start..=end).step_by(step as usize).fold(0, |acc, i| acc | 1 << i)
}

/// Every value of a field, written `*`.
fn all(b: Bounds) -> u64 {
    bits(b.min, b.max, 1) | STAR
}

/// A comma-separated field (robfig's getField; empty list items are skipped).
fn field(text: &str, b: Bounds) -> Result<u64, ScheduleError> {
    text.split(',')
        .filter(|r| !r.is_empty())
        .try_fold(0, |acc, r| Ok(acc | range(r, b)?))
}

/// One list item: `*`, `?`, `n`, `a-b`, each with an optional `/step` (robfig's getRange,
/// quirks included: after `*`, a `-x` is ignored).
fn range(expr: &str, b: Bounds) -> Result<u64, ScheduleError> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;
    let (start, mut end, mut extra) = if matches!(low_and_high[0], "*" | "?") {
        (b.min, b.max, STAR)
    } else {
        let start = int_or_name(low_and_high[0], b)?;
        let end = match low_and_high[..] {
            [_] => start,
            [_, high] => int_or_name(high, b)?,
            _ => return Err(field_error(format!("too many hyphens: {expr}"))),
        };
        (start, end, 0)
    };
    let step = match range_and_step[..] {
        [_] => 1,
        [_, step] => {
            let step = int(step)?;
            // `n/step` means `n-max/step`.
            if single {
                end = b.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => return Err(field_error(format!("too many slashes: {expr}"))),
    };
    if start < b.min {
        return Err(field_error(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            b.min
        )));
    }
    if end > b.max {
        return Err(field_error(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            b.max
        )));
    }
    if start > end {
        return Err(field_error(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        )));
    }
    if step == 0 {
        return Err(field_error(format!(
            "step of range should be a positive number: {expr}"
        )));
    }
    Ok(bits(start, end, step) | extra)
}

fn int_or_name(expr: &str, b: Bounds) -> Result<u64, ScheduleError> {
    let lower = expr.to_ascii_lowercase();
    match b.names.iter().find(|(name, _)| *name == lower) {
        Some((_, value)) => Ok(*value),
        None => int(expr),
    }
}

/// A non-negative decimal, as Go's `strconv.Atoi` reads it (an optional sign).
fn int(expr: &str) -> Result<u64, ScheduleError> {
    let digits = expr.strip_prefix(['+', '-']).unwrap_or(expr);
    let atoi = |why: &str| {
        field_error(format!(
            "failed to parse int from {expr}: strconv.Atoi: parsing {expr:?}: {why}"
        ))
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(atoi("invalid syntax"));
    }
    let n: i64 = digits.parse().map_err(|_| atoi("value out of range"))?;
    if expr.starts_with('-') && n != 0 {
        return Err(field_error(format!("negative number (-{n}) not allowed: {expr}")));
    }
    Ok(n as u64)
}

/// The `@` descriptors (robfig's parseDescriptor: exact, lower-case words).
fn descriptor(spec: &str) -> Result<Kind, ScheduleError> {
    let fields = |minute, hour, dom, month, dow| {
        Kind::Fields(Fields {
            minute,
            hour,
            dom,
            month,
            dow,
        })
    };
    let (midnight, hour) = (1 << MINUTES.min, 1 << HOURS.min);
    let day_one = 1 << DAYS_OF_MONTH.min;
    Ok(match spec {
        "@yearly" | "@annually" => fields(midnight, hour, day_one, 1 << MONTHS.min, all(DAYS_OF_WEEK)),
        "@monthly" => fields(midnight, hour, day_one, all(MONTHS), all(DAYS_OF_WEEK)),
        "@weekly" => fields(midnight, hour, all(DAYS_OF_MONTH), all(MONTHS), 1 << DAYS_OF_WEEK.min),
        "@daily" | "@midnight" => fields(midnight, hour, all(DAYS_OF_MONTH), all(MONTHS), all(DAYS_OF_WEEK)),
        "@hourly" => fields(midnight, all(HOURS), all(DAYS_OF_MONTH), all(MONTHS), all(DAYS_OF_WEEK)),
        _ => match spec.strip_prefix("@every ") {
            Some(text) => {
                let nanos = go_duration(text).map_err(|why| ScheduleError::Duration {
                    descriptor: spec.to_string(),
                    why,
                })?;
                // robfig's Every: at least a second, truncated to whole seconds.
                Kind::Every((nanos / 1_000_000_000).max(1) as i64)
            }
            None => return Err(ScheduleError::Descriptor(spec.to_string())),
        },
    })
}

/// Nanoseconds of a Go duration (`1h30m`, `90s`, `1.5h`, `-2m`, `0`), as Go's
/// `time.ParseDuration` reads it; the error is Go's message without `time: `.
fn go_duration(orig: &str) -> Result<i128, String> {
    const MAX: u128 = 1 << 63;
    let invalid = || format!("invalid duration {orig:?}");
    let (negative, mut s) = match orig.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, orig.strip_prefix('+').unwrap_or(orig)),
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid());
        }
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let whole: u128 = if int_len == 0 {
            0
        } else {
            s[..int_len].parse().map_err(|_| invalid())?
        };
        if whole > MAX {
            return Err(invalid());
        }
        s = &s[int_len..];
        let mut fraction = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            fraction = &rest[..frac_len];
            s = &rest[frac_len..];
            if int_len == 0 && frac_len == 0 {
                return Err(invalid());
            }
        }
        let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
        if unit_len == 0 {
            return Err(format!("missing unit in duration {orig:?}"));
        }
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("unknown unit {unit:?} in duration {orig:?}")),
        };
        let mut value = whole.checked_mul(scale).filter(|v| *v <= MAX).ok_or_else(invalid)?;
        // Go keeps at most the fraction digits that fit; nineteen are more than any unit needs.
        let digits: String = fraction.chars().take(19).collect();
        if !digits.is_empty() {
            let f: u128 = digits.parse().map_err(|_| invalid())?;
            value += f * scale / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(value).filter(|t| *t <= MAX).ok_or_else(invalid)?;
    }
    if !negative && total > MAX - 1 {
        return Err(invalid());
    }
    Ok(if negative { -(total as i128) } else { total as i128 })
}

/// `t` without its fraction of a second (rounded down, also before 1970).
fn floor_second(t: Timestamp) -> Timestamp {
    let mut seconds = t.as_second();
    if t.subsec_nanosecond() < 0 {
        seconds -= 1;
    }
    Timestamp::from_second(seconds).unwrap_or(t)
}

/// The instant of a wall-clock time in `tz`; one in a gap moves forward by the gap, one in
/// a repeated hour takes its first occurrence.
fn zoned(tz: &TimeZone, dt: DateTime) -> Option<Zoned> {
    tz.to_ambiguous_zoned(dt).compatible().ok()
}

/// The start of `hour` on `date` in `tz`.
fn at_hour(tz: &TimeZone, date: Date, hour: i8) -> Option<Zoned> {
    zoned(tz, date.at(hour, 0, 0, 0))
}

/// `t` moved by `seconds` of elapsed time.
fn shift(t: &Zoned, seconds: i64) -> Option<Zoned> {
    let ts = t.timestamp().checked_add(SignedDuration::from_secs(seconds)).ok()?;
    Some(ts.to_zoned(t.time_zone().clone()))
}

/// `t` moved by a calendar span, keeping its wall-clock time where it exists.
fn shift_calendar(t: &Zoned, span: Span) -> Option<Zoned> {
    zoned(t.time_zone(), t.datetime().checked_add(span).ok()?)
}

/// `t` rounded down to a multiple of `seconds` of Unix time (Go's `Truncate`).
fn truncate(t: &Zoned, seconds: i64) -> Option<Zoned> {
    let s = t.timestamp().as_second().div_euclid(seconds) * seconds;
    Some(Timestamp::from_second(s).ok()?.to_zoned(t.time_zone().clone()))
}

fn bit(value: i8) -> u64 {
    1u64 << (value as u32 & 63)
}

impl Fields {
    /// Whether `t`'s day is one of the schedule's: both day fields must match when either
    /// is `*`, either suffices when neither is.
    fn day_matches(&self, t: &Zoned) -> bool {
        let dom = self.dom & bit(t.day()) != 0;
        let dow = self.dow & bit(t.weekday().to_sunday_zero_offset()) != 0;
        if self.dom & STAR != 0 || self.dow & STAR != 0 {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// robfig's `SpecSchedule.Next`, step by step: the first whole second after `after`,
    /// then each field from month down to second moved forward until it matches, starting
    /// over whenever a larger field rolls over.
    fn next(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = floor_second(after).checked_add(SignedDuration::from_secs(1)).ok()?;
        let mut t = start.to_zoned(tz.clone());
        // Whether the time was reset to the start of a unit yet: only the first mismatch
        // resets it, later ones only move on.
        let mut reset = false;
        let year_limit = t.year() + 5;
        'wrap: loop {
            if t.year() > year_limit {
                return None;
            }
            while self.month & bit(t.month()) == 0 {
                if !reset {
                    reset = true;
                    t = at_hour(tz, t.date().first_of_month(), 0)?;
                }
                t = shift_calendar(&t, Span::new().months(1))?;
                if t.month() == 1 {
                    continue 'wrap;
                }
            }
            while !self.day_matches(&t) {
                if !reset {
                    reset = true;
                    t = at_hour(tz, t.date(), 0)?;
                }
                t = shift_calendar(&t, Span::new().days(1))?;
                // A day that does not start at midnight (daylight saving changing at
                // 00:00): back to the nearest whole day, as robfig does.
                let hour = i64::from(t.hour());
                if hour != 0 {
                    let by = if hour > 12 { 24 - hour } else { -hour };
                    t = shift(&t, by * 3600)?;
                }
                if t.day() == 1 {
                    continue 'wrap;
                }
            }
            while self.hour & bit(t.hour()) == 0 {
                if !reset {
                    reset = true;
                    t = at_hour(tz, t.date(), t.hour())?;
                }
                // Elapsed hours: the hour skipped by a daylight-saving gap never matches,
                // the one repeated by its end matches twice.
                t = shift(&t, 3600)?;
                if t.hour() == 0 {
                    continue 'wrap;
                }
            }
            while self.minute & bit(t.minute()) == 0 {
                if !reset {
                    reset = true;
                    t = truncate(&t, 60)?;
                }
                t = shift(&t, 60)?;
                if t.minute() == 0 {
                    continue 'wrap;
                }
            }
            // A standard schedule's seconds field is `0`: on to the next whole minute.
            if t.second() != 0 {
                reset = true;
                t = shift(&t, 60 - i64::from(t.second()))?;
                continue 'wrap;
            }
            return Some(t.timestamp());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// The next `n` times after `from`, as RFC 3339 in UTC.
    fn nexts(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = ts(from);
        for _ in 0..n {
            match s.next(t) {
                Some(next) => {
                    out.push(next.to_string());
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    #[test]
    fn fields_parse_to_the_values_they_allow() {
        // (field text, bounds, allowed values, written as a star)
        let cases: &[(&str, Bounds, &[u64], bool)] = &[
            ("*", MINUTES, &[], true),
            ("?", DAYS_OF_MONTH, &[], true),
            ("5", MINUTES, &[5], false),
            ("1-3", HOURS, &[1, 2, 3], false),
            ("1,3,5", HOURS, &[1, 3, 5], false),
            ("1,,3", HOURS, &[1, 3], false),
            ("*/15", MINUTES, &[0, 15, 30, 45], false),
            ("*/1", HOURS, &[], true),
            ("10-20/5", MINUTES, &[10, 15, 20], false),
            ("50/3", MINUTES, &[50, 53, 56, 59], false),
            ("mon-fri", DAYS_OF_WEEK, &[1, 2, 3, 4, 5], false),
            ("SUN,Sat", DAYS_OF_WEEK, &[0, 6], false),
            ("JAN-MAR/2", MONTHS, &[1, 3], false),
            ("dec", MONTHS, &[12], false),
            ("0-6", DAYS_OF_WEEK, &[0, 1, 2, 3, 4, 5, 6], false),
            // robfig's quirk: what follows `*-` is ignored.
            ("*-5", HOURS, &[], true),
        ];
        for (text, b, values, star) in cases {
            let got = field(text, *b).unwrap();
            let want = if *star {
                all(*b)
            } else {
                values.iter().fold(0, |acc, v| acc | 1 << v)
            };
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn bad_schedules_are_rejected_with_robfigs_messages() {
        let cases = [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("* * * * * *", "expected exactly 5 fields, found 6: [* * * * * *]"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("* 24 * * *", "end of range (24) above maximum (23): 24"),
            ("* * 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("* * 32 * *", "end of range (32) above maximum (31): 32"),
            ("* * * 13 *", "end of range (13) above maximum (12): 13"),
            ("* * * * 7", "end of range (7) above maximum (6): 7"),
            ("5-1 * * * *", "beginning of range (5) beyond end of range (1): 5-1"),
            ("*/0 * * * *", "step of range should be a positive number: */0"),
            ("1-2-3 * * * *", "too many hyphens: 1-2-3"),
            ("*/2/3 * * * *", "too many slashes: */2/3"),
            (
                "x * * * *",
                "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax",
            ),
            ("*/-1 * * * *", "negative number (-1) not allowed: -1"),
            (
                "* * * * MONDAY",
                "failed to parse int from MONDAY: strconv.Atoi: parsing \"MONDAY\": invalid syntax",
            ),
            // Sunday is 0: a week that wraps is a backwards range.
            (
                "* * * jan-feb mon-sun",
                "beginning of range (1) beyond end of range (0): mon-sun",
            ),
            ("@fortnightly", "unrecognized descriptor: @fortnightly"),
            ("@HOURLY", "unrecognized descriptor: @HOURLY"),
            (
                "@every 5",
                "failed to parse duration @every 5: time: missing unit in duration \"5\"",
            ),
            (
                "@every 5d",
                "failed to parse duration @every 5d: time: unknown unit \"d\" in duration \"5d\"",
            ),
            (
                "@every x",
                "failed to parse duration @every x: time: invalid duration \"x\"",
            ),
            (
                "TZ=UTC * * * * *",
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ),
            (
                "CRON_TZ=UTC * * * * *",
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
            ),
        ];
        for (text, message) in cases {
            let err = Schedule::parse(text).expect_err(text);
            assert_eq!(err.to_string(), message, "{text}");
        }
    }

    #[test]
    fn descriptors_mean_their_five_fields() {
        let cases = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ];
        for (descriptor, fields) in cases {
            assert_eq!(
                Schedule::parse(descriptor).unwrap().kind,
                Schedule::parse(fields).unwrap().kind,
                "{descriptor}"
            );
        }
    }

    #[test]
    fn every_takes_go_durations_in_whole_seconds() {
        let cases = [
            ("@every 1h30m", 5400),
            ("@every 90s", 90),
            ("@every 1.5m", 90),
            ("@every 2500ms", 2),
            ("@every 300ms", 1),
            ("@every 0", 1),
            ("@every -5m", 1),
            ("@every 1h1m1s", 3661),
        ];
        for (text, seconds) in cases {
            assert_eq!(Schedule::parse(text).unwrap().kind, Kind::Every(seconds), "{text}");
        }
        let s = Schedule::parse("@every 90s").unwrap();
        assert_eq!(
            nexts(&s, "2024-01-01T00:00:00.5Z", 2),
            ["2024-01-01T00:01:30Z", "2024-01-01T00:03:00Z"]
        );
    }

    #[test]
    fn next_times_follow_the_fields() {
        // (schedule, from, the next times)
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "* * * * *",
                "2024-01-01T00:00:00Z",
                &["2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z"],
            ),
            // Strictly after: a time exactly on the schedule is not its own next.
            ("30 * * * *", "2024-01-01T00:30:00Z", &["2024-01-01T01:30:00Z"]),
            // A fraction of a second past a time.
            ("* * * * *", "2024-01-01T00:00:59.999Z", &["2024-01-01T00:01:00Z"]),
            (
                "*/20 9-10 * * *",
                "2024-01-01T09:30:00Z",
                &[
                    "2024-01-01T09:40:00Z",
                    "2024-01-01T10:00:00Z",
                    "2024-01-01T10:20:00Z",
                    "2024-01-01T10:40:00Z",
                    "2024-01-02T09:00:00Z",
                ],
            ),
            // Month ends: the 31st only in months that have one.
            (
                "0 0 31 * *",
                "2024-01-31T00:00:00Z",
                &["2024-03-31T00:00:00Z", "2024-05-31T00:00:00Z", "2024-07-31T00:00:00Z"],
            ),
            // Leap days.
            (
                "0 12 29 feb *",
                "2023-01-01T00:00:00Z",
                &["2024-02-29T12:00:00Z", "2028-02-29T12:00:00Z"],
            ),
            // Year ends roll over.
            (
                "59 23 31 12 *",
                "2024-06-01T00:00:00Z",
                &["2024-12-31T23:59:00Z", "2025-12-31T23:59:00Z"],
            ),
            // Day of month OR day of week when both are restricted: the 13th and Fridays
            // (2024-09-13 is a Friday).
            (
                "0 0 13 * 5",
                "2024-09-01T00:00:00Z",
                &[
                    "2024-09-06T00:00:00Z",
                    "2024-09-13T00:00:00Z",
                    "2024-09-20T00:00:00Z",
                    "2024-09-27T00:00:00Z",
                    "2024-10-04T00:00:00Z",
                    "2024-10-11T00:00:00Z",
                    "2024-10-13T00:00:00Z",
                ],
            ),
            // AND when one of them is `*`: Fridays only...
            (
                "0 0 * * fri",
                "2024-09-01T00:00:00Z",
                &["2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z"],
            ),
            // ...and `?` counts as `*`...
            (
                "0 0 ? * fri",
                "2024-09-01T00:00:00Z",
                &["2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z"],
            ),
            // ...but a stepped `*/2` does not: odd days OR Mondays.
            (
                "0 0 */2 * 1",
                "2024-09-01T00:00:00Z",
                &["2024-09-02T00:00:00Z", "2024-09-03T00:00:00Z", "2024-09-05T00:00:00Z"],
            ),
            // Weekdays by name, across a weekend (2024-01-05 is a Friday).
            (
                "30 8 * * MON-FRI",
                "2024-01-05T09:00:00Z",
                &["2024-01-08T08:30:00Z", "2024-01-09T08:30:00Z"],
            ),
            ("@weekly", "2024-01-01T00:00:00Z", &["2024-01-07T00:00:00Z"]),
            ("@monthly", "2024-01-15T00:00:00Z", &["2024-02-01T00:00:00Z"]),
            ("@yearly", "2024-01-01T00:00:00Z", &["2025-01-01T00:00:00Z"]),
            // Never: the 30th of February.
            ("0 0 30 2 *", "2024-01-01T00:00:00Z", &[]),
        ];
        for (spec, from, want) in cases {
            let s = Schedule::parse(spec).unwrap();
            assert_eq!(nexts(&s, from, want.len().max(1)), *want, "{spec} after {from}");
        }
    }

    #[test]
    fn time_zones_shift_the_wall_clock_and_daylight_saving_skips_or_repeats() {
        // (schedule, zone, from, the next times)
        let cases: &[(&str, &str, &str, &[&str])] = &[
            // 09:00 in New York: 14:00 UTC in winter, 13:00 in summer.
            (
                "0 9 * * *",
                "America/New_York",
                "2024-03-09T15:00:00Z",
                &["2024-03-10T13:00:00Z", "2024-03-11T13:00:00Z"],
            ),
            // 02:30 does not exist on 2024-03-10 in New York: that day has no run.
            (
                "30 2 * * *",
                "America/New_York",
                "2024-03-09T12:00:00Z",
                &["2024-03-11T06:30:00Z"],
            ),
            // 01:30 happens twice on 2024-11-03 (EDT, then EST): two runs.
            (
                "30 1 * * *",
                "America/New_York",
                "2024-11-02T12:00:00Z",
                &["2024-11-03T05:30:00Z", "2024-11-03T06:30:00Z", "2024-11-04T06:30:00Z"],
            ),
            // Hourly runs keep to elapsed hours across the gap.
            (
                "0 * * * *",
                "Europe/Berlin",
                "2024-03-31T00:30:00Z",
                &["2024-03-31T01:00:00Z", "2024-03-31T02:00:00Z"],
            ),
            // A half-hour zone.
            (
                "0 0 * * *",
                "Asia/Kolkata",
                "2024-01-01T00:00:00Z",
                &["2024-01-01T18:30:00Z"],
            ),
            (
                "0 0 * * *",
                "Etc/UTC",
                "2024-01-01T00:00:00Z",
                &["2024-01-02T00:00:00Z"],
            ),
        ];
        for (spec, zone, from, want) in cases {
            let s = Schedule::for_cronjob(spec, Some(zone)).unwrap();
            assert_eq!(nexts(&s, from, want.len()), *want, "{spec} in {zone} after {from}");
        }
    }

    #[test]
    fn time_zone_names_are_checked_as_kubernetes_checks_them() {
        for ok in ["UTC", "Etc/UTC", "America/New_York", "Europe/Berlin", "Etc/GMT+5"] {
            assert!(time_zone_named(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("", "timeZone must be nil or non-empty string"),
            (
                "Local",
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ),
            (
                "local",
                "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            ),
            ("Mars/Olympus_Mons", "unknown time zone Mars/Olympus_Mons"),
            ("america/new_york", "unknown time zone america/new_york"),
            ("../etc/passwd", "unknown time zone ../etc/passwd"),
            (
                "America/Argentina_Buenos_Aires",
                "unknown time zone America/Argentina_Buenos_Aires",
            ),
            ("/UTC", "unknown time zone /UTC"),
        ];
        for (name, message) in cases {
            let err = time_zone_named(name).expect_err(name);
            assert_eq!(err.to_string(), message, "{name:?}");
        }
    }
}
