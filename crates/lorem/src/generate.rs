//! The domain: what a lorem request is, its rules, and the text it yields.
//!
//! | type        | `min..=max` counts            | cap  |
//! |-------------|-------------------------------|------|
//! | `word`      | letters of the one word       | 64   |
//! | `sentence`  | words of the one sentence     | 1000 |
//! | `paragraph` | sentences of the paragraph    | 100  |
//!
//! Words are the distinct words of lipsum's two texts ([`lipsum::LOREM_IPSUM`]
//! and [`lipsum::LIBER_PRIMUS`]), lowercased, punctuation stripped. Sentences
//! follow lipsum's Markov chain over the same texts, so they read like Latin.
//! Every draw comes from the caller's random number generator, so a seeded
//! generator gives the same text every time.
//!
//! ```
//! use lorem::generate::{Generator, LoremRequest};
//! use rand::SeedableRng;
//!
//! let request = LoremRequest::parse("Sentence", "3", "5")?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let text = Generator::new().generate(&request, &mut rng);
//! let words = text.split_whitespace().count();
//! assert!((3..=5).contains(&words), "{text}");
//! # Ok::<(), lorem::generate::LoremError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use lipsum::MarkovChain;
use rand::Rng;
use rand::seq::SliceRandom;

/// The longest word that may be asked for, in letters.
pub const WORD_CAP: u32 = 64;
/// The most words a sentence may be asked to have.
pub const SENTENCE_CAP: u32 = 1000;
/// The most sentences a paragraph may be asked to have.
pub const PARAGRAPH_CAP: u32 = 100;
/// How many words each sentence of a paragraph has (drawn in this range):
/// a paragraph request bounds its sentences, not their length.
pub const PARAGRAPH_SENTENCE_WORDS: (u32, u32) = (4, 16);

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One word whose length in letters is within the bounds.
    Word,
    /// One sentence whose number of words is within the bounds.
    Sentence,
    /// One paragraph whose number of sentences is within the bounds.
    Paragraph,
}

impl Kind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [Kind; 3] = [Kind::Word, Kind::Sentence, Kind::Paragraph];

    /// The name used in the URL (`word`, `sentence`, `paragraph`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Word => "word",
            Kind::Sentence => "sentence",
            Kind::Paragraph => "paragraph",
        }
    }

    /// The largest `max` accepted for this kind: generating is cheap, but a
    /// bound keeps one request from tying up a worker.
    pub fn cap(self) -> u32 {
        match self {
            Kind::Word => WORD_CAP,
            Kind::Sentence => SENTENCE_CAP,
            Kind::Paragraph => PARAGRAPH_CAP,
        }
    }

    /// What the bounds count, for messages (`letters`, `words`, `sentences`).
    pub fn unit(self) -> &'static str {
        match self {
            Kind::Word => "letters",
            Kind::Sentence => "words",
            Kind::Paragraph => "sentences",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = LoremError;

    /// Parses a kind case-insensitively (`Word`, `SENTENCE`...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| LoremError::UnknownKind { kind: s.to_owned() })
    }
}

/// Why a request was refused. The `Display` text is the body of the 400
/// answer, so each message names the value and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoremError {
    /// The type is none of `word`, `sentence`, `paragraph`.
    #[error("unknown type {kind:?}; expected one of word, sentence, paragraph")]
    UnknownKind {
        /// The type that was given.
        kind: String,
    },

    /// A bound is not a whole number at all.
    #[error("{bound} {value:?} is not a number; expected a whole number from 1 to {cap}")]
    NotANumber {
        /// `min` or `max`.
        bound: &'static str,
        /// The text that was given.
        value: String,
        /// The cap of the requested kind.
        cap: u32,
    },

    /// A bound is a number, but too large to even represent.
    #[error("{bound} {value:?} is not a number in range; expected a whole number from 1 to {cap}")]
    NotInRange {
        /// `min` or `max`.
        bound: &'static str,
        /// The text that was given.
        value: String,
        /// The cap of the requested kind.
        cap: u32,
    },

    /// A bound is zero or negative.
    #[error("{bound} must be at least 1, got {value}")]
    BelowOne {
        /// `min` or `max`.
        bound: &'static str,
        /// The number that was given.
        value: i64,
    },

    /// A bound is above the cap of its kind.
    #[error("{bound} {value} is above the cap for {kind}: at most {cap} {unit}", unit = kind.unit())]
    AboveCap {
        /// `min` or `max`.
        bound: &'static str,
        /// The number that was given.
        value: i64,
        /// The requested kind.
        kind: Kind,
        /// Its cap.
        cap: u32,
    },

    /// `min` is larger than `max`.
    #[error("min {min} is larger than max {max}")]
    MinAboveMax {
        /// The lower bound that was given.
        min: u32,
        /// The upper bound that was given.
        max: u32,
    },

    /// No word of the texts has a length within the bounds.
    #[error("no word has {min}..{max} letters; words have {shortest}..{longest} letters")]
    NoWordInRange {
        /// The lower bound that was given.
        min: u32,
        /// The upper bound that was given.
        max: u32,
        /// The length of the shortest word there is.
        shortest: u32,
        /// The length of the longest word there is.
        longest: u32,
    },
}

/// A checked request: `1 <= min <= max <= kind.cap()`, and for words at least
/// one word fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoremRequest {
    /// What to generate.
    pub kind: Kind,
    /// The lower bound, inclusive (letters, words or sentences).
    pub min: u32,
    /// The upper bound, inclusive.
    pub max: u32,
}

impl LoremRequest {
    /// Parses and checks the three path segments of `/lorem/{type}/{min}/{max}`.
    ///
    /// # Errors
    /// A [`LoremError`] naming the first problem: the type, then each bound,
    /// then the caps, then the order of the bounds, then (for words) whether
    /// any word is that long.
    pub fn parse(kind: &str, min: &str, max: &str) -> Result<Self, LoremError> {
        let kind: Kind = kind.parse()?;
        let cap = kind.cap();
        let min_value = parse_bound("min", min, cap)?;
        let max_value = parse_bound("max", max, cap)?;
        for (bound, value) in [("max", max_value), ("min", min_value)] {
            if value > i64::from(cap) {
                return Err(LoremError::AboveCap {
                    bound,
                    value,
                    kind,
                    cap,
                });
            }
        }
        // Both are within 1..=cap here, so they fit in u32.
        let min = u32::try_from(min_value).unwrap_or(cap);
        let max = u32::try_from(max_value).unwrap_or(cap);
        Self::new(kind, min, max)
    }

    /// Checks already-numeric bounds.
    ///
    /// # Errors
    /// As [`parse`](Self::parse), minus the type and number syntax checks.
    pub fn new(kind: Kind, min: u32, max: u32) -> Result<Self, LoremError> {
        let cap = kind.cap();
        for (bound, value) in [("min", min), ("max", max)] {
            if value == 0 {
                return Err(LoremError::BelowOne { bound, value: 0 });
            }
        }
        for (bound, value) in [("max", max), ("min", min)] {
            if value > cap {
                return Err(LoremError::AboveCap {
                    bound,
                    value: i64::from(value),
                    kind,
                    cap,
                });
            }
        }
        if min > max {
            return Err(LoremError::MinAboveMax { min, max });
        }
        if kind == Kind::Word {
            let corpus = corpus();
            if corpus.words_in(min, max).0 == 0 {
                let (shortest, longest) = corpus.length_range();
                return Err(LoremError::NoWordInRange {
                    min,
                    max,
                    shortest,
                    longest,
                });
            }
        }
        Ok(LoremRequest { kind, min, max })
    }
}

fn parse_bound(bound: &'static str, text: &str, cap: u32) -> Result<i64, LoremError> {
    let trimmed = text.trim();
    if let Ok(value) = trimmed.parse::<i64>() {
        if value < 1 {
            return Err(LoremError::BelowOne { bound, value });
        }
        return Ok(value);
    }
    let digits = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if trimmed.starts_with('-') {
            // A huge negative number is still "below one".
            return Err(LoremError::BelowOne {
                bound,
                value: i64::MIN,
            });
        }
        return Err(LoremError::NotInRange {
            bound,
            value: text.to_owned(),
            cap,
        });
    }
    Err(LoremError::NotANumber {
        bound,
        value: text.to_owned(),
        cap,
    })
}

/// The word list and the Markov chain, built once per process.
struct Corpus {
    chain: MarkovChain<'static>,
    /// Distinct words by length in letters.
    by_len: BTreeMap<u32, Vec<String>>,
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(Corpus::build)
}

/// The letters of a token: what remains once punctuation, digits and quotes
/// are stripped.
fn letters(token: &str) -> String {
    token.chars().filter(|c| c.is_alphabetic()).collect()
}

impl Corpus {
    fn build() -> Self {
        let mut chain = MarkovChain::new();
        chain.learn(lipsum::LOREM_IPSUM);
        chain.learn(lipsum::LIBER_PRIMUS);
        let distinct: BTreeSet<String> = [lipsum::LOREM_IPSUM, lipsum::LIBER_PRIMUS]
            .iter()
            .flat_map(|text| text.split_whitespace())
            .map(|token| letters(token).to_lowercase())
            .filter(|word| !word.is_empty())
            .collect();
        let mut by_len: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for word in distinct {
            let len = u32::try_from(word.chars().count()).unwrap_or(u32::MAX);
            by_len.entry(len).or_default().push(word);
        }
        Corpus { chain, by_len }
    }

    /// The shortest and longest word lengths there are.
    fn length_range(&self) -> (u32, u32) {
        let shortest = self.by_len.keys().next().copied().unwrap_or(0);
        let longest = self.by_len.keys().next_back().copied().unwrap_or(0);
        (shortest, longest)
    }

    /// How many words have `min..=max` letters, and the lists they are in.
    fn words_in(&self, min: u32, max: u32) -> (usize, Vec<&[String]>) {
        if min > max {
            return (0, Vec::new());
        }
        let lists: Vec<&[String]> = self
            .by_len
            .range(min..=max)
            .map(|(_, words)| words.as_slice())
            .collect();
        (lists.iter().map(|l| l.len()).sum(), lists)
    }

    /// A word drawn uniformly from those with `min..=max` letters; if there
    /// is none (an unchecked request), the word whose length is closest.
    fn word<R: Rng + ?Sized>(&self, min: u32, max: u32, rng: &mut R) -> String {
        let (total, lists) = self.words_in(min, max);
        if total > 0 {
            let mut index = rng.gen_range(0..total);
            for list in lists {
                if let Some(word) = list.get(index) {
                    return word.clone();
                }
                index -= list.len();
            }
        }
        let closest = self
            .by_len
            .iter()
            .min_by_key(|(len, _)| len.abs_diff(min).min(len.abs_diff(max)));
        closest
            .and_then(|(_, words)| words.choose(rng))
            .cloned()
            .unwrap_or_else(|| "lorem".to_owned())
    }

    /// One sentence of exactly `n` words (`n >= 1`): a capitalised first word,
    /// commas kept where the text has them, one full stop at the end.
    fn sentence<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> String {
        let mut words: Vec<String> = Vec::with_capacity(n);
        // The chain never ends, but bound the walk anyway; tokens that are
        // only punctuation are skipped.
        for token in self.chain.iter_with_rng(&mut *rng).take(n * 4 + 16) {
            if words.len() == n {
                break;
            }
            let word = letters(token);
            if word.is_empty() {
                continue;
            }
            let comma = token.ends_with([',', ';', ':']);
            words.push(if comma { word + "," } else { word });
        }
        while words.len() < n {
            words.push(self.word(1, WORD_CAP, rng));
        }
        let mut sentence = String::new();
        for (i, word) in words.iter().enumerate() {
            if i == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    sentence.extend(first.to_uppercase());
                    sentence.push_str(chars.as_str());
                }
            } else {
                sentence.push(' ');
                sentence.push_str(word);
            }
        }
        let end = sentence.trim_end_matches(',').len();
        sentence.truncate(end);
        sentence.push('.');
        sentence
    }
}

/// Generates lorem ipsum text for checked requests.
///
/// Cheap to create and to copy: the word list and the Markov chain are built
/// once per process, on first use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Generator {
    _private: (),
}

impl Generator {
    /// A generator over lipsum's texts.
    pub fn new() -> Self {
        Generator { _private: () }
    }

    /// The shortest and longest word lengths available, in letters: the
    /// range a `word` request must overlap.
    pub fn word_lengths(&self) -> (u32, u32) {
        corpus().length_range()
    }

    /// Generates the text `request` asks for, drawing from `rng`.
    ///
    /// Never panics: a request built by hand that breaks the rules of
    /// [`LoremRequest::parse`] is clamped (bounds to `1..=cap`, swapped if
    /// reversed; a word length no word has gives the closest word).
    pub fn generate<R: Rng>(&self, request: &LoremRequest, rng: &mut R) -> String {
        let cap = request.kind.cap();
        let a = request.min.clamp(1, cap);
        let b = request.max.clamp(1, cap);
        let (min, max) = (a.min(b), a.max(b));
        let corpus = corpus();
        match request.kind {
            Kind::Word => corpus.word(min, max, rng),
            Kind::Sentence => {
                let n = rng.gen_range(min..=max);
                corpus.sentence(n as usize, rng)
            }
            Kind::Paragraph => {
                let count = rng.gen_range(min..=max);
                let (shortest, longest) = PARAGRAPH_SENTENCE_WORDS;
                let sentences: Vec<String> = (0..count)
                    .map(|_| {
                        let n = rng.gen_range(shortest..=longest);
                        corpus.sentence(n as usize, rng)
                    })
                    .collect();
                sentences.join(" ")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn kinds_parse_in_any_case() {
        assert_eq!("WoRd".parse::<Kind>(), Ok(Kind::Word));
        assert_eq!("sentence".parse::<Kind>(), Ok(Kind::Sentence));
        assert_eq!("PARAGRAPH".parse::<Kind>(), Ok(Kind::Paragraph));
        assert!("words".parse::<Kind>().is_err());
    }

    #[test]
    fn word_lengths_are_computed_from_the_texts() {
        let (shortest, longest) = Generator::new().word_lengths();
        assert_eq!(shortest, 1);
        assert!(longest > 10 && longest < WORD_CAP, "{longest}");
    }

    #[test]
    fn paragraphs_have_the_asked_number_of_sentences() {
        let mut rng = StdRng::seed_from_u64(1);
        let request = LoremRequest::parse("paragraph", "3", "6").unwrap();
        for _ in 0..50 {
            let text = Generator::new().generate(&request, &mut rng);
            let sentences = text.split_whitespace().filter(|w| w.ends_with('.')).count();
            assert!((3..=6).contains(&sentences), "{sentences}: {text}");
        }
    }

    #[test]
    fn unchecked_requests_do_not_panic() {
        let mut rng = StdRng::seed_from_u64(2);
        for kind in Kind::ALL {
            for (min, max) in [(0, 0), (5, 1), (u32::MAX, u32::MAX), (60, 64)] {
                let text = Generator::new().generate(&LoremRequest { kind, min, max }, &mut rng);
                assert!(!text.is_empty());
            }
        }
    }
}
