//! Known text of the generated clips and word error rate, shared by the end-to-end tests and
//! the chaos harness.
//!
//! The clips and their `<name>.txt` live in `tests/fixtures/generated/` (`make fixtures`).

use std::path::{Path, PathBuf};

/// `tests/fixtures/generated`, checked to exist (panics with the command that builds it).
pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/generated");
    assert!(
        dir.join("long.wav").is_file(),
        "test audio is missing: run `make fixtures` (tests/fixtures/make.sh)"
    );
    dir
}

/// One generated file, checked to exist.
pub fn fixture(name: &str) -> PathBuf {
    let path = fixtures().join(name);
    assert!(
        path.exists(),
        "missing fixture {}: run `make fixtures`",
        path.display()
    );
    path
}

/// The known text of a generated clip.
pub fn expected_text(name: &str) -> String {
    let path = fixture(&format!("{name}.txt"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Lowercase words with punctuation removed (apostrophes kept inside words).
pub fn normalise(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| c.is_whitespace() || c == '-')
        .map(|word| {
            word.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .trim_matches('\'')
                .to_owned()
        })
        .filter(|word| !word.is_empty())
        .collect()
}

/// Word-level edit distance and reference length.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let (r, h) = (normalise(reference), normalise(hypothesis));
    let mut previous: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut current = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let substitution = previous[j] + usize::from(rw != hw);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    (previous[h.len()], r.len())
}

/// Word error rate: edits over reference words.
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let (errors, words) = word_errors(reference, hypothesis);
    errors as f64 / words.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate_counts_edits_over_reference_words() {
        assert_eq!(word_errors("The cat, sat.", "the cat sat"), (0, 3));
        assert_eq!(word_errors("a b c d", "a x c"), (2, 4));
        assert!((wer("one two", "") - 1.0).abs() < 1e-9);
    }
}
