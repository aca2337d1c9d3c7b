//! Swedish identifiers with their check rules: personnummer (and
//! samordningsnummer), organisationsnummer and kommunkod.
//!
//! Parsing is strict and errors say what is wrong without repeating the
//! number (error messages end up in logs and receipts; a personnummer must
//! not). `Debug` masks the individual part for the same reason.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentifierError {
    /// The text does not have the shape of this identifier.
    #[error("{kind} must be written as {expected}")]
    Format {
        /// Which identifier.
        kind: &'static str,
        /// The accepted forms.
        expected: &'static str,
    },
    /// The last digit does not match the Luhn check digit of the others.
    #[error("{kind} has a wrong check digit (the last digit fails the Luhn check)")]
    CheckDigit {
        /// Which identifier.
        kind: &'static str,
    },
    /// The birth date of a personnummer (or the day + 60 of a samordningsnummer) is not a date.
    #[error("personnummer has an impossible date of birth (month or day out of range)")]
    InvalidDate,
    /// An organisationsnummer whose third digit is below 2 is a personnummer.
    #[error(
        "organisationsnummer must have a third digit of 2 or more (a lower one is a personnummer)"
    )]
    NotALegalEntity,
    /// The first digit of an organisationsnummer is not a known group (0 and 4 are unused).
    #[error("organisationsnummer starts with an unused group digit (0 or 4)")]
    UnknownGroup,
    /// The first two digits of a kommunkod are not a county (län) code.
    #[error("kommunkod must start with a county code (01, 03-10, 12-14, 17-25)")]
    UnknownCounty,
}

/// The Luhn check digit (weights 2,1,2,1,... from the left) of nine digits.
fn luhn_check_digit(digits: &[u8]) -> u8 {
    let sum: u32 = digits
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let p = u32::from(d) * if i % 2 == 0 { 2 } else { 1 };
            p / 10 + p % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

fn digits_of(s: &str) -> Option<Vec<u8>> {
    s.bytes()
        .map(|b| b.is_ascii_digit().then_some(b - b'0'))
        .collect()
}

fn two(d: &[u8]) -> u32 {
    u32::from(d[0]) * 10 + u32::from(d[1])
}

fn is_leap(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// A personnummer or samordningsnummer, stored in the 12-digit form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Personnummer {
    /// YYYYMMDDNNNC.
    digits: [u8; 12],
}

const PNR_FORMS: &str =
    "YYYYMMDD-NNNC, YYYYMMDDNNNC, YYMMDD-NNNC, YYMMDD+NNNC (100 years or older) or YYMMDDNNNC";

impl Personnummer {
    /// Parses a personnummer, expanding a 10-digit form to the most recent
    /// century that does not lie in the future of `reference_year` (one
    /// century earlier with the `+` separator).
    pub fn parse_with_reference_year(
        s: &str,
        reference_year: i32,
    ) -> Result<Self, IdentifierError> {
        let format = IdentifierError::Format {
            kind: "personnummer",
            expected: PNR_FORMS,
        };
        let s = s.trim();
        if !s.is_ascii() {
            return Err(format);
        }
        let (body, plus) = match s.len() {
            13 if s.as_bytes()[8] == b'-' => (format!("{}{}", &s[..8], &s[9..]), false),
            12 => (s.to_string(), false),
            11 if matches!(s.as_bytes()[6], b'-' | b'+') => {
                (format!("{}{}", &s[..6], &s[7..]), s.as_bytes()[6] == b'+')
            }
            10 => (s.to_string(), false),
            _ => return Err(format),
        };
        let d = digits_of(&body).ok_or(format)?;
        let full: [u8; 12] = if d.len() == 12 {
            d.try_into().map_err(|_| IdentifierError::InvalidDate)?
        } else {
            let yy = two(&d[0..2]) as i32;
            let mut year = reference_year - reference_year.rem_euclid(100) + yy;
            if year > reference_year {
                year -= 100;
            }
            if plus {
                year -= 100;
            }
            let century = (year / 100) as u8;
            let mut full = [0u8; 12];
            full[0] = century / 10;
            full[1] = century % 10;
            full[2..].copy_from_slice(&d);
            full
        };
        let year = (two(&full[0..2]) * 100 + two(&full[2..4])) as i32;
        let month = two(&full[4..6]);
        let mut day = two(&full[6..8]);
        if day > 60 {
            day -= 60;
        }
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return Err(IdentifierError::InvalidDate);
        }
        if luhn_check_digit(&full[2..11]) != full[11] {
            return Err(IdentifierError::CheckDigit {
                kind: "personnummer",
            });
        }
        Ok(Self { digits: full })
    }

    /// Parses with the current year as reference (see [`Self::parse_with_reference_year`]).
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        Self::parse_with_reference_year(s, crate::time::year_of_ms(crate::time::now_ms()))
    }

    /// Whether this is a samordningsnummer (day of birth + 60).
    pub fn is_samordningsnummer(&self) -> bool {
        two(&self.digits[6..8]) > 60
    }

    /// The canonical form `YYYYMMDD-NNNC`.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Personnummer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.digits[..8] {
            write!(f, "{d}")?;
        }
        f.write_str("-")?;
        for d in &self.digits[8..] {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Personnummer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Personnummer(")?;
        for d in &self.digits[..8] {
            write!(f, "{d}")?;
        }
        f.write_str("-****)")
    }
}

impl FromStr for Personnummer {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An organisationsnummer of a legal entity, stored as ten digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Organisationsnummer {
    digits: [u8; 10],
}

impl Organisationsnummer {
    /// Parses `NNNNNN-NNNC` or `NNNNNNNNNN`, optionally prefixed by `16`.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        let format = IdentifierError::Format {
            kind: "organisationsnummer",
            expected: "NNNNNN-NNNC or NNNNNNNNNN (optionally prefixed by 16)",
        };
        let s = s.trim();
        if !s.is_ascii() {
            return Err(format);
        }
        let s = if s.len() >= 12 && s.starts_with("16") {
            &s[2..]
        } else {
            s
        };
        let body = match s.len() {
            11 if s.as_bytes()[6] == b'-' => format!("{}{}", &s[..6], &s[7..]),
            10 => s.to_string(),
            _ => return Err(format),
        };
        let d = digits_of(&body).ok_or(format.clone())?;
        let digits: [u8; 10] = d.try_into().map_err(|_| format)?;
        if matches!(digits[0], 0 | 4) {
            return Err(IdentifierError::UnknownGroup);
        }
        if digits[2] < 2 {
            return Err(IdentifierError::NotALegalEntity);
        }
        if luhn_check_digit(&digits[..9]) != digits[9] {
            return Err(IdentifierError::CheckDigit {
                kind: "organisationsnummer",
            });
        }
        Ok(Self { digits })
    }

    /// The canonical form `NNNNNN-NNNC`.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Organisationsnummer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.digits[..6] {
            write!(f, "{d}")?;
        }
        f.write_str("-")?;
        for d in &self.digits[6..] {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Organisationsnummer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Organisationsnummer({self})")
    }
}

impl FromStr for Organisationsnummer {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// County (län) codes that exist; 02, 11, 15 and 16 were merged away.
const COUNTY_CODES: [u8; 21] = [
    1, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 17, 18, 19, 20, 21, 22, 23, 24, 25,
];

/// A four-digit kommunkod (municipality code), e.g. `0580` for Linköping.
///
/// A kommunkod has no check digit; what can be checked is the shape and that
/// its first two digits are an existing county code.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kommunkod(String);

impl Kommunkod {
    /// Parses exactly four ASCII digits whose first two are a county code.
    pub fn parse(s: &str) -> Result<Self, IdentifierError> {
        let d = digits_of(s)
            .filter(|d| d.len() == 4)
            .ok_or(IdentifierError::Format {
                kind: "kommunkod",
                expected: "four digits, e.g. 0580",
            })?;
        if !COUNTY_CODES.contains(&(d[0] * 10 + d[1])) {
            return Err(IdentifierError::UnknownCounty);
        }
        Ok(Self(s.to_string()))
    }

    /// The four digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Kommunkod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Kommunkod {
    type Err = IdentifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Test data only: completes nine digits `YYMMDDNNN` with their check digit.
/// Useful for generating clearly fictitious numbers in tests.
pub fn with_check_digit(nine: &str) -> Option<String> {
    let d = digits_of(nine).filter(|d| d.len() == 9)?;
    Some(format!("{nine}{}", luhn_check_digit(&d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personnummer_forms_and_check_digit() {
        // Tolvan Tolvansson, a widely used fictitious test number.
        let p = Personnummer::parse_with_reference_year("19121212-1212", 2026).unwrap();
        assert_eq!(p.canonical(), "19121212-1212");
        assert_eq!(
            Personnummer::parse_with_reference_year("191212121212", 2026).unwrap(),
            p
        );
        // Ten digits: the most recent century not in the future; `+` adds a century.
        assert_eq!(
            Personnummer::parse_with_reference_year("121212-1212", 2026)
                .unwrap()
                .canonical(),
            "20121212-1212"
        );
        assert_eq!(
            Personnummer::parse_with_reference_year("121212+1212", 2026)
                .unwrap()
                .canonical(),
            "19121212-1212"
        );
        assert_eq!(
            Personnummer::parse_with_reference_year("19121212-1213", 2026),
            Err(IdentifierError::CheckDigit {
                kind: "personnummer"
            })
        );
        assert_eq!(
            Personnummer::parse_with_reference_year("19121312-1212", 2026),
            Err(IdentifierError::InvalidDate)
        );
        for bad in [
            "",
            "1912121-21212",
            "19121212_1212",
            "abcdefgh-ijkl",
            "١٩١٢١٢١٢-١٢١٢",
        ] {
            assert!(matches!(
                Personnummer::parse_with_reference_year(bad, 2026),
                Err(IdentifierError::Format { .. })
            ));
        }
    }

    #[test]
    fn samordningsnummer_and_leap_days() {
        let nine = "701063238"; // 1970-10-03 + 60 days
        let s = with_check_digit(nine).unwrap();
        let p = Personnummer::parse_with_reference_year(&format!("19{s}"), 2026).unwrap();
        assert!(p.is_samordningsnummer());
        let leap = with_check_digit("000229123").unwrap();
        assert!(Personnummer::parse_with_reference_year(&format!("20{leap}"), 2026).is_ok());
        assert_eq!(
            Personnummer::parse_with_reference_year(&format!("19{leap}"), 2026),
            Err(IdentifierError::InvalidDate)
        );
    }

    #[test]
    fn debug_masks_the_individual_part() {
        let p = Personnummer::parse_with_reference_year("19121212-1212", 2026).unwrap();
        assert_eq!(format!("{p:?}"), "Personnummer(19121212-****)");
        let err = Personnummer::parse_with_reference_year("19121212-1213", 2026).unwrap_err();
        assert!(!err.to_string().contains("1212"));
    }

    #[test]
    fn organisationsnummer() {
        let o = Organisationsnummer::parse("202100-5448").unwrap();
        assert_eq!(o.canonical(), "202100-5448");
        assert_eq!(Organisationsnummer::parse("162021005448").unwrap(), o);
        assert_eq!(Organisationsnummer::parse("2021005448").unwrap(), o);
        assert_eq!(
            Organisationsnummer::parse("202100-5449"),
            Err(IdentifierError::CheckDigit {
                kind: "organisationsnummer"
            })
        );
        assert_eq!(
            Organisationsnummer::parse("121212-1212"),
            Err(IdentifierError::NotALegalEntity)
        );
        assert_eq!(
            Organisationsnummer::parse("402100-5448"),
            Err(IdentifierError::UnknownGroup)
        );
    }

    #[test]
    fn kommunkod() {
        assert_eq!(Kommunkod::parse("0580").unwrap().as_str(), "0580");
        assert_eq!(
            Kommunkod::parse("0200"),
            Err(IdentifierError::UnknownCounty)
        );
        assert!(matches!(
            Kommunkod::parse("580"),
            Err(IdentifierError::Format { .. })
        ));
        assert!(matches!(
            Kommunkod::parse("05800"),
            Err(IdentifierError::Format { .. })
        ));
    }
}
