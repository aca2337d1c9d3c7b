//! The `add-checkpoint` exchange of C2SP `tlog-witness`, carried over MQTT.
//!
//! The bodies are exactly those of the HTTP protocol; what HTTP carries in
//! the method, path and status line travels in the topic instead:
//!
//! * request, broker → witness, on `/tenants/{agency}/in/_witness/add-checkpoint/{id}`:
//!   an old size line `old N`, up to 63 consistency proof lines (one
//!   base64 hash each), an empty line, and the checkpoint (a signed note);
//! * answer, witness → broker, on `/tenants/{agency}/witness/add-checkpoint/{id}/{status}`:
//!   for `200` the witness's cosignature lines, for `409` the size it last
//!   cosigned and a line feed; for other statuses a line of text saying why.
//!
//! `{id}` is the broker's name for the request (1 to 32 of `0-9a-z`), so an
//! answer is matched to its request; `{status}` is the HTTP status code the
//! witness would have answered.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::audit::proof::NodeHash;

/// Most consistency proof lines a request may carry (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;
/// Largest request accepted (a checkpoint with many cosignatures fits easily).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// An `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness last cosigned, as the log believes.
    pub old_size: u64,
    /// The consistency proof from `old_size` to the checkpoint's size.
    pub proof: Vec<NodeHash>,
    /// The signed checkpoint.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// The request body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut body = format!("old {}\n", self.old_size);
        for hash in &self.proof {
            body.push_str(&STANDARD.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.checkpoint);
        body.into_bytes()
    }

    /// Parses a request body; the error says what is malformed (400).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(format!(
                "the request has {} bytes, more than {MAX_REQUEST_BYTES}",
                body.len()
            ));
        }
        let text = std::str::from_utf8(body).map_err(|_| "the request is not UTF-8".to_string())?;
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| "no empty line before the checkpoint".to_string())?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or_else(|| "the first line must be `old <size>`".to_string())?;
        let old_size = parse_decimal(old)?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(format!("more than {MAX_PROOF_LINES} proof lines"));
            }
            let hash = STANDARD
                .decode(line)
                .ok()
                .and_then(|h| NodeHash::try_from(h.as_slice()).ok())
                .ok_or_else(|| format!("proof line `{line}` is not a base64 hash of 32 bytes"))?;
            proof.push(hash);
        }
        Ok(Self {
            old_size,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }
}

/// A decimal size without leading zeros (`0` itself allowed).
pub fn parse_decimal(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(format!(
            "`{s}` is not a size in decimal without leading zeros"
        ));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is not a size in decimal"))
}

/// What a witness answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200: the cosignature lines.
    Cosigned(String),
    /// 409: the old size is not the size the witness last cosigned, which is this.
    Conflict(u64),
    /// 400 (malformed or old size beyond the checkpoint), 403 (not signed by
    /// a trusted log key), 404 (unknown origin), 422 (not consistent).
    Refused {
        /// The HTTP status.
        status: u16,
        /// Why, for the log's operator.
        reason: String,
    },
}

impl Answer {
    /// The HTTP status code of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Answer::Cosigned(_) => 200,
            Answer::Conflict(_) => 409,
            Answer::Refused { status, .. } => *status,
        }
    }

    /// The answer's body.
    pub fn body(&self) -> Vec<u8> {
        match self {
            Answer::Cosigned(lines) => lines.clone().into_bytes(),
            Answer::Conflict(size) => format!("{size}\n").into_bytes(),
            Answer::Refused { reason, .. } => {
                format!("{}\n", reason.replace('\n', " ")).into_bytes()
            }
        }
    }

    /// Reads an answer from its status and body.
    pub fn parse(status: u16, body: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())?;
        match status {
            200 => Ok(Answer::Cosigned(text.to_string())),
            409 => text
                .strip_suffix('\n')
                .ok_or_else(|| "a 409 answer is a size and a line feed".to_string())
                .and_then(parse_decimal)
                .map(Answer::Conflict),
            400 | 403 | 404 | 422 => Ok(Answer::Refused {
                status,
                reason: text.trim_end().to_string(),
            }),
            other => Err(format!("status {other} is not an add-checkpoint answer")),
        }
    }
}

/// Whether `id` is a request id the protocol allows: 1 to 32 of `0-9a-z`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_malformed_ones_are_refused() {
        let request = AddCheckpoint {
            old_size: 20,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: "o\n21\nAAAA\n\n\u{2014} o AAAA\n".into(),
        };
        let bytes = request.to_bytes();
        assert!(bytes.starts_with(b"old 20\nAQEB"));
        assert_eq!(AddCheckpoint::parse(&bytes).unwrap(), request);
        for bad in [
            "old 020\n\nx",
            "old\n\nx",
            "new 1\n\nx",
            "old 1\nAAAA\n\nx",
            "old 1\n",
            "old -1\n\nx",
        ] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let many = format!(
            "old 1\n{}\nx",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n".repeat(64)
        );
        assert!(AddCheckpoint::parse(many.as_bytes()).is_err());
    }

    #[test]
    fn answers_round_trip() {
        for answer in [
            Answer::Cosigned("\u{2014} w AAAA\n".into()),
            Answer::Conflict(42),
            Answer::Refused {
                status: 422,
                reason: "not consistent".into(),
            },
        ] {
            assert_eq!(
                Answer::parse(answer.status(), &answer.body()).unwrap(),
                answer
            );
        }
        assert!(Answer::parse(409, b"042\n").is_err());
        assert!(Answer::parse(500, b"").is_err());
        assert!(valid_request_id("0a9z"));
        assert!(!valid_request_id("A"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id(&"a".repeat(33)));
    }
}
