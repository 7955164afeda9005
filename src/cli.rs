//! What the two binaries share about their command lines: an argument
//! error is one line, as every other error of theirs.

/// clap's error message as one line: its first paragraph joined (the
/// problem, with the missing argument or the possible values that clap
/// puts on the lines after it), without clap's own `error: ` in front.
pub fn one_line(clap_message: &str) -> String {
    let first: Vec<&str> = clap_message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    let line = first.join(" ");
    match line.strip_prefix("error: ").unwrap_or(&line) {
        "" => "invalid arguments (see --help)".to_string(),
        l => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_paragraph_is_kept_on_one_line() {
        let m = "error: the following required arguments were not provided:\n  --network <NET>\n\nUsage: x\n";
        assert_eq!(
            super::one_line(m),
            "the following required arguments were not provided: --network <NET>"
        );
        assert_eq!(super::one_line(""), "invalid arguments (see --help)");
    }
}
