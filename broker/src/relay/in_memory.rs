//! Helpers for driving the relay over bytes in memory, shared by its unit
//! tests and the fuzz target (broker/fuzz), which both check what the relay
//! let through packet by packet.

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Runs a future whose reader and writer are bytes in memory: they never
/// wait, so the future finishes without a runtime.
pub fn run<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("in-memory I/O kept the relay waiting");
}

/// Splits bytes into whole packets: (first byte, body). A cut-off packet
/// at the end is left out.
pub fn packets(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let Some(&first) = bytes.first() {
        let mut remaining = 0usize;
        let mut i = 1;
        loop {
            let Some(&b) = bytes.get(i) else { return out };
            remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let Some(body) = bytes.get(i..i + remaining) else {
            return out;
        };
        out.push((first, body));
        bytes = &bytes[i + remaining..];
    }
    out
}

/// The topic at the start of a PUBLISH body the relay passed on.
pub fn topic(body: &[u8]) -> &str {
    let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    std::str::from_utf8(&body[2..2 + len]).expect("a passed topic is UTF-8")
}
