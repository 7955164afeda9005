//! Running the host's own tools (`ip`, `nft`, `iptables-legacy`) with a
//! bound on their time. The agent calls them while it holds the lock every
//! attach, detach and table refresh waits for: one that hangs (a wedged
//! netlink, an `nft` waiting on a lock of its own) must not stop the
//! control side for good.
//!
//! The script goes in and the output comes out on threads of their own, so
//! a big script with much to say cannot fill both pipes and wait forever.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How long one run of a tool may take before it is killed.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Runs `program args` with `stdin` as its input (none if `None`) and
/// returns what it printed and how it exited; an error if it could not
/// start or ran past `limit` (then it is killed).
pub fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    limit: Duration,
) -> std::io::Result<Output> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let script = stdin.unwrap_or_default().to_owned();
    let input = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = input {
            let _ = s.write_all(script.as_bytes());
        }
    });
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    // Polled, not waited on: a tool stuck where SIGKILL cannot reach it at
    // once (deep in the kernel) must not hold us past the limit, and the
    // child is only killed while we still own it (never a reused pid).
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_micros(200);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            // Reaped whenever it does go; the pipe threads end with it.
            std::thread::spawn(move || child.wait());
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("`{program}` did not finish within {limit:?} and was stopped"),
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut v);
        }
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_tool_that_hangs_is_stopped_at_the_limit() {
        let t = Instant::now();
        let e = run("sleep", &["30"], None, Duration::from_millis(300)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("`sleep` did not finish"), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn big_input_and_output_pass_both_ways() {
        // More than a pipe holds (64 KB) each way, at once: written before
        // read, this would wait forever.
        let script: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
        let out = run("cat", &[], Some(&script), LIMIT).unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, script.as_bytes());
        let out = run("sh", &["-c", "echo oops >&2; exit 3"], None, LIMIT).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stderr, b"oops\n");
    }

    #[test]
    fn a_missing_tool_is_an_error() {
        assert!(run("no-such-tool-mesh", &[], None, LIMIT).is_err());
    }
}
