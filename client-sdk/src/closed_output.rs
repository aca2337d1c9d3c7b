//! Ending a command-line program quietly when its reader has gone, as Unix
//! tools do: `samverkan audit verify | head -1` stops when `head` exits.
//!
//! Rust programs ignore SIGPIPE, so a write to a pipe without a reader fails
//! with EPIPE and `println!` panics with a backtrace. Restoring SIGPIPE's
//! default action for the whole process is not an option: vectored writes to
//! a socket whose peer has gone raise SIGPIPE as well, so a client or broker
//! would be killed by a dropped TLS connection instead of handling it. Here
//! only a failed write to standard output or standard error, whose reader
//! has really gone (checked with `poll`), ends the process, by SIGPIPE's
//! default action (status 141 in a shell). Every other panic and error is
//! left as it was.

/// Installs a panic hook that ends the process as SIGPIPE would when
/// `println!` or `eprintln!` failed because the reader of standard output or
/// standard error has gone; other panics reach the previous hook. Call it
/// first thing in `main`.
pub fn end_quietly_when_closed() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let printing = info.payload_as_str().is_some_and(|m| {
            m.starts_with("failed printing to stdout") || m.starts_with("failed printing to stderr")
        });
        if printing && output_closed() {
            die_of_sigpipe();
        }
        previous(info);
    }));
}

/// Ends the process as SIGPIPE would if `error` (or one of its sources) is a
/// broken pipe and the reader of standard output or standard error has gone;
/// returns otherwise (a broken pipe to the network is an ordinary error).
/// For the errors of explicit writes (`writeln!(stdout, …)?`) that reach
/// `main`.
pub fn end_if_closed(error: &(dyn std::error::Error + 'static)) {
    let mut next = Some(error);
    // An error's chain of sources is finite; the bound only guards against a cycle.
    for _ in 0..64 {
        let Some(e) = next else { return };
        let kind = match e.downcast_ref::<std::io::Error>() {
            Some(io) => Some(io.kind()),
            // serde_json's error hides its I/O error from `source`.
            None => e
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind),
        };
        if kind == Some(std::io::ErrorKind::BrokenPipe) {
            if output_closed() {
                die_of_sigpipe();
            }
            return;
        }
        next = e.source();
    }
}

/// Whether the reader of standard output or standard error has gone.
#[cfg(unix)]
fn output_closed() -> bool {
    use rustix::event::{PollFd, PollFlags, poll};
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut fds = [
        PollFd::new(&stdout, PollFlags::OUT),
        PollFd::new(&stderr, PollFlags::OUT),
    ];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if poll(&mut fds, Some(&now)).is_err() {
        return false;
    }
    fds.iter()
        .any(|fd| fd.revents().intersects(PollFlags::ERR | PollFlags::HUP))
}

#[cfg(not(unix))]
fn output_closed() -> bool {
    false
}

/// Terminates the process by SIGPIPE's default action, or with status 141
/// (128 + SIGPIPE) where that is not possible.
fn die_of_sigpipe() -> ! {
    #[cfg(unix)]
    {
        let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
    }
    std::process::exit(141)
}
