//! Swedish (the default) and English, and times in Swedish local time.
//!
//! Each text is written at its place of use in both languages
//! (`lang.t("Sök", "Search")`), so a missing translation does not compile.
//! The language is a cookie set by `/lang/{sv,en}`.

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Redirect, Response};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Deserialize;

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    /// Svenska.
    #[default]
    Sv,
    /// English.
    En,
}

impl Lang {
    /// The language of a request: its `lang` cookie, Swedish otherwise.
    pub fn of(headers: &HeaderMap) -> Self {
        let english = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .any(|c| c.trim() == "lang=en");
        if english { Lang::En } else { Lang::Sv }
    }

    /// The HTML `lang` code.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Sv => "sv",
            Lang::En => "en",
        }
    }

    /// The text in this language.
    pub fn t(self, sv: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Sv => sv,
            Lang::En => en,
        }
    }

    /// A whole number with thousands grouped as the language writes them.
    pub fn number(self, n: u64) -> String {
        let digits = n.to_string();
        let sep = match self {
            Lang::Sv => '\u{a0}',
            Lang::En => ',',
        };
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(sep);
            }
            out.push(c);
        }
        out
    }
}

/// Sweden's time zone (bundled time zone data, so it works without tzdata).
pub fn stockholm() -> TimeZone {
    TimeZone::get("Europe/Stockholm").unwrap_or(TimeZone::UTC)
}

/// Milliseconds since the epoch as Swedish local time with the zone shown,
/// e.g. `2026-11-30 02:24:44 CET`.
pub fn local_time(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t
            .to_zoned(stockholm())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => format!("{ms} ms"),
    }
}

/// A date `YYYY-MM-DD` in Swedish local time: the milliseconds of its start.
pub fn parse_local_date(text: &str) -> Option<i64> {
    let date: jiff::civil::Date = text.parse().ok()?;
    let zoned = date.to_zoned(stockholm()).ok()?;
    Some(zoned.timestamp().as_millisecond())
}

/// The date (Swedish local time) of a moment, `YYYY-MM-DD`.
pub fn local_date(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_zoned(stockholm()).strftime("%Y-%m-%d").to_string(),
        Err(_) => String::new(),
    }
}

/// Where to go back to after switching the language.
#[derive(Deserialize)]
pub struct Back {
    back: Option<String>,
}

/// `GET /lang/{sv,en}?back=/path`: sets the language cookie and goes back.
pub async fn switch(Path(code): Path<String>, Query(back): Query<Back>) -> Response {
    let value = if code == "en" { "en" } else { "sv" };
    // Only a path of this site: never another host.
    let target = back
        .back
        .filter(|b| b.starts_with('/') && !b.starts_with("//") && !b.contains('\\'))
        .unwrap_or_else(|| "/".into());
    (
        [(
            header::SET_COOKIE,
            format!("lang={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=31536000"),
        )],
        Redirect::to(&target),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swedish_time_shows_the_zone() {
        // 2026-07-01 12:00 UTC is 14:00 summer time in Stockholm.
        assert_eq!(local_time(1_782_907_200_000), "2026-07-01 14:00:00 CEST");
        assert_eq!(local_time(1_795_953_600_000), "2026-11-29 13:00:00 CET");
        assert_eq!(parse_local_date("2026-11-29"), Some(1_795_906_800_000));
        assert_eq!(Lang::Sv.number(9312), "9\u{a0}312");
        assert_eq!(Lang::En.number(1_000_000), "1,000,000");
        assert_eq!(Lang::En.number(12), "12");
    }
}
