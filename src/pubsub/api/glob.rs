//! The `pattern` of the `channels` API method: Centrifugo compiles it with
//! `github.com/gobwas/glob` and no separators, so this is that syntax:
//!
//! | pattern    | matches                                                  |
//! |------------|----------------------------------------------------------|
//! | `*`, `**`  | any sequence of characters, empty included               |
//! | `?`        | exactly one character                                    |
//! | `[abc]`    | one of the listed characters; `[a-z]` a range            |
//! | `[!abc]`   | one character not listed (ranges allowed too)            |
//! | `{a,b*,c}` | any of the comma-separated sub-patterns (may nest)       |
//! | `\x`       | the character `x` itself                                 |
//!
//! Everything else is a literal character; `,` and `}` are literals outside
//! braces. The whole channel name must match (not a substring).
//!
//! Why our own matcher instead of a crate: the `glob` crate has path
//! semantics (`*` stops at `/`, no `{a,b}`) and `globset` brings a regex
//! engine for one admin call; neither is gobwas's syntax exactly. This one
//! compiles the pattern to a small NFA and runs it Pike-VM style (a set of
//! states advanced one character at a time), so matching costs at most
//! `O(name length × pattern length)` whatever the pattern: no backtracking
//! blow-up on `*a*a*a*a…` or nested alternatives.

use std::fmt;

/// Longest accepted pattern, in bytes. Matching one name costs up to
/// `name chars × pattern chars` steps and `channels` runs it over every
/// channel on the caller's thread, so the pattern is kept short; channel
/// patterns in practice are a few dozen bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Deepest accepted `{}` nesting (bounds the parser's recursion).
pub const MAX_NESTING: usize = 16;

/// Why a pattern was refused (the API answers 107 bad request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobError {
    TooLong,
    TooDeep,
    /// `[` without `]`, or an empty class `[]` / `[!]`.
    BadClass,
    /// A range whose end is below its start, e.g. `[z-a]`.
    BadRange,
    /// `{` without `}`.
    UnclosedBrace,
    /// `\` at the very end.
    TrailingEscape,
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GlobError::TooLong => "pattern too long",
            GlobError::TooDeep => "pattern braces nested too deep",
            GlobError::BadClass => "unterminated or empty character class",
            GlobError::BadRange => "character range end before start",
            GlobError::UnclosedBrace => "unterminated '{'",
            GlobError::TrailingEscape => "pattern ends with '\\'",
        })
    }
}

impl std::error::Error for GlobError {}

#[derive(Debug, Clone)]
enum Node {
    Char(char),
    /// `?`: one character.
    One,
    /// `*`: any sequence.
    Star,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Alt(Vec<Vec<Node>>),
}

#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    One,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// Continue at both targets.
    Split(usize, usize),
    Jmp(usize),
    Match,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Glob {
    prog: Vec<Inst>,
}

impl Glob {
    /// Compiles `pattern` (module docs for the syntax).
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(GlobError::TooLong);
        }
        let chars: Vec<char> = pattern.chars().collect();
        let mut parser = Parser {
            chars: &chars,
            pos: 0,
        };
        let nodes = parser.sequence(0)?;
        // At depth 0 `sequence` only stops at the end of input.
        let mut prog = Vec::new();
        compile(&nodes, &mut prog);
        prog.push(Inst::Match);
        Ok(Glob { prog })
    }

    /// True if the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let n = self.prog.len();
        let mut current: Vec<usize> = Vec::with_capacity(n);
        let mut next: Vec<usize> = Vec::with_capacity(n);
        // `seen[pc] == step` marks pc as already in the list built for `step`.
        let mut seen = vec![usize::MAX; n];
        let mut stack = Vec::new();
        self.add(0, 0, &mut current, &mut seen, &mut stack);
        for (i, c) in name.chars().enumerate() {
            if current.is_empty() {
                return false;
            }
            next.clear();
            for &pc in &current {
                let ok = match &self.prog[pc] {
                    Inst::Char(want) => *want == c,
                    Inst::One => true,
                    Inst::Class { negated, ranges } => {
                        ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
                    }
                    Inst::Split(..) | Inst::Jmp(_) | Inst::Match => false,
                };
                if ok {
                    self.add(pc + 1, i + 1, &mut next, &mut seen, &mut stack);
                }
            }
            std::mem::swap(&mut current, &mut next);
        }
        current
            .iter()
            .any(|&pc| matches!(self.prog[pc], Inst::Match))
    }

    /// Adds `pc` and everything reachable from it without consuming a
    /// character to `list` (once per `step`). Iterative: a long chain of
    /// jumps must not grow the call stack.
    fn add(
        &self,
        pc: usize,
        step: usize,
        list: &mut Vec<usize>,
        seen: &mut [usize],
        stack: &mut Vec<usize>,
    ) {
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if seen[pc] == step {
                continue;
            }
            seen[pc] = step;
            match self.prog[pc] {
                Inst::Jmp(to) => stack.push(to),
                Inst::Split(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                _ => list.push(pc),
            }
        }
    }
}

struct Parser<'p> {
    chars: &'p [char],
    pos: usize,
}

impl Parser<'_> {
    /// Parses until the end of input or, inside braces (`depth > 0`), until
    /// an unescaped `,` or `}` (left for the caller).
    fn sequence(&mut self, depth: usize) -> Result<Vec<Node>, GlobError> {
        let mut nodes = Vec::new();
        while let Some(&c) = self.chars.get(self.pos) {
            match c {
                ',' | '}' if depth > 0 => break,
                '*' => {
                    self.pos += 1;
                    if !matches!(nodes.last(), Some(Node::Star)) {
                        nodes.push(Node::Star);
                    }
                }
                '?' => {
                    self.pos += 1;
                    nodes.push(Node::One);
                }
                '[' => {
                    self.pos += 1;
                    nodes.push(self.class()?);
                }
                '{' => {
                    self.pos += 1;
                    if depth + 1 > MAX_NESTING {
                        return Err(GlobError::TooDeep);
                    }
                    nodes.push(self.alternatives(depth + 1)?);
                }
                '\\' => {
                    let escaped = *self
                        .chars
                        .get(self.pos + 1)
                        .ok_or(GlobError::TrailingEscape)?;
                    self.pos += 2;
                    nodes.push(Node::Char(escaped));
                }
                _ => {
                    self.pos += 1;
                    nodes.push(Node::Char(c));
                }
            }
        }
        Ok(nodes)
    }

    /// After `{`: sub-patterns separated by `,` up to the matching `}`.
    fn alternatives(&mut self, depth: usize) -> Result<Node, GlobError> {
        let mut alts = Vec::new();
        loop {
            alts.push(self.sequence(depth)?);
            match self.chars.get(self.pos) {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    return Ok(Node::Alt(alts));
                }
                _ => return Err(GlobError::UnclosedBrace),
            }
        }
    }

    /// After `[`: the class up to `]`.
    fn class(&mut self) -> Result<Node, GlobError> {
        let negated = self.chars.get(self.pos) == Some(&'!');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        loop {
            let c = match self.chars.get(self.pos) {
                None => return Err(GlobError::BadClass),
                Some(']') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => {
                    self.pos += 1;
                    *self.chars.get(self.pos).ok_or(GlobError::BadClass)?
                }
                Some(&c) => c,
            };
            self.pos += 1;
            // `a-z`, unless the `-` is last (`[a-]` is 'a' or '-').
            let hi = match (self.chars.get(self.pos), self.chars.get(self.pos + 1)) {
                (Some('-'), Some(&h)) if h != ']' => {
                    self.pos += 2;
                    if h == '\\' {
                        let h = *self.chars.get(self.pos).ok_or(GlobError::BadClass)?;
                        self.pos += 1;
                        h
                    } else {
                        h
                    }
                }
                _ => c,
            };
            if hi < c {
                return Err(GlobError::BadRange);
            }
            ranges.push((c, hi));
        }
        if ranges.is_empty() {
            return Err(GlobError::BadClass);
        }
        Ok(Node::Class { negated, ranges })
    }
}

fn compile(nodes: &[Node], prog: &mut Vec<Inst>) {
    for node in nodes {
        match node {
            Node::Char(c) => prog.push(Inst::Char(*c)),
            Node::One => prog.push(Inst::One),
            Node::Class { negated, ranges } => prog.push(Inst::Class {
                negated: *negated,
                ranges: ranges.clone(),
            }),
            Node::Star => {
                // L: split L+1, L+3; L+1: one; L+2: jmp L; L+3: ...
                let l = prog.len();
                prog.push(Inst::Split(l + 1, l + 3));
                prog.push(Inst::One);
                prog.push(Inst::Jmp(l));
            }
            Node::Alt(alts) => {
                let mut to_end = Vec::new();
                for (i, alt) in alts.iter().enumerate() {
                    let last = i + 1 == alts.len();
                    let split = prog.len();
                    if !last {
                        prog.push(Inst::Split(split + 1, usize::MAX));
                    }
                    compile(alt, prog);
                    if !last {
                        to_end.push(prog.len());
                        prog.push(Inst::Jmp(usize::MAX));
                        let next_alt = prog.len();
                        prog[split] = Inst::Split(split + 1, next_alt);
                    }
                }
                let end = prog.len();
                for j in to_end {
                    prog[j] = Inst::Jmp(end);
                }
            }
        }
    }
}
