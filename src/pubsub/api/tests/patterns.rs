//! Channel patterns (`channels` with a pattern).

use super::*;

// ---- glob -----------------------------------------------------------------

fn glob_matches(pattern: &str, name: &str) -> bool {
    Glob::new(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .matches(name)
}

#[test]
fn glob_syntax() {
    let yes = [
        ("", ""),
        ("abc", "abc"),
        ("*", ""),
        ("*", "any:thing/at#all"),
        ("**", "a:b"),
        ("chat:*", "chat:"),
        ("chat:*", "chat:room#1,2"),
        ("*:*", "a:b"),
        ("?", "é"),
        ("a?c", "abc"),
        ("[abc]", "b"),
        ("[a-c]x", "cx"),
        ("[!a-c]", "d"),
        ("[!abc]", "-"),
        ("[a-]", "-"),
        ("[\\]]", "]"),
        ("{news,chat}:*", "chat:1"),
        ("{news,chat}:*", "news:"),
        ("{a,{b,c}d}", "cd"),
        ("{,x}y", "y"),
        ("{a}", "a"),
        ("\\*", "*"),
        ("\\{a,b\\}", "{a,b}"),
        ("a,b}", "a,b}"),
        ("a]", "a]"),
        ("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaab"),
    ];
    for (p, n) in yes {
        assert!(glob_matches(p, n), "{p:?} should match {n:?}");
    }
    let no = [
        ("", "a"),
        ("abc", "abcd"),
        ("abc", "ab"),
        ("chat:*", "chat"),
        ("chat:*", "xchat:1"),
        ("?", ""),
        ("?", "ab"),
        ("[abc]", "d"),
        ("[!a-c]", "b"),
        ("{news,chat}:*", "new:1"),
        ("{a,{b,c}d}", "d"),
        ("\\*", "a"),
        (
            "*a*a*a*a*a*a*b",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac",
        ),
    ];
    for (p, n) in no {
        assert!(!glob_matches(p, n), "{p:?} should not match {n:?}");
    }
}

#[test]
fn glob_rejects_bad_patterns() {
    let long = "a".repeat(glob::MAX_PATTERN_BYTES + 1);
    let deep = "{".repeat(glob::MAX_NESTING + 1);
    let cases = [
        ("[", GlobError::BadClass),
        ("[]", GlobError::BadClass),
        ("[!]", GlobError::BadClass),
        ("[abc", GlobError::BadClass),
        ("[a\\", GlobError::BadClass),
        ("[z-a]", GlobError::BadRange),
        ("{a,b", GlobError::UnclosedBrace),
        ("{", GlobError::UnclosedBrace),
        ("abc\\", GlobError::TrailingEscape),
        (long.as_str(), GlobError::TooLong),
        (deep.as_str(), GlobError::TooDeep),
    ];
    for (p, want) in cases {
        assert_eq!(Glob::new(p).err(), Some(want), "{p:?}");
    }
    let ok_depth = format!(
        "{}x{}",
        "{".repeat(glob::MAX_NESTING),
        "}".repeat(glob::MAX_NESTING)
    );
    assert!(glob_matches(&ok_depth, "x"));
}

/// Backtracking reference matcher for `*`, `?`, `[..]` (plain sets) and
/// non-nested `{a,b}`: slow but obviously right.
fn reference(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| reference(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && reference(&p[1..], &n[1..]),
        Some('[') => {
            let close = p.iter().position(|&c| c == ']').expect("closed");
            let set = &p[1..close];
            !n.is_empty() && set.contains(&n[0]) && reference(&p[close + 1..], &n[1..])
        }
        Some('{') => {
            let close = p.iter().position(|&c| c == '}').expect("closed");
            p[1..close].split(|&c| c == ',').any(|alt| {
                let mut q = alt.to_vec();
                q.extend_from_slice(&p[close + 1..]);
                reference(&q, n)
            })
        }
        Some(&c) => n.first() == Some(&c) && reference(&p[1..], &n[1..]),
    }
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        4 => "[ab:]".prop_map(String::from),
        2 => Just("*".to_string()),
        2 => Just("?".to_string()),
        1 => "\\[[ab]{1,2}\\]".prop_map(String::from),
        1 => "\\{[ab]{0,2}(,[ab*?]{0,2}){0,2}\\}".prop_map(String::from),
    ];
    prop::collection::vec(atom, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn glob_agrees_with_reference(p in pattern_strategy(), n in "[ab:]{0,10}") {
        let pc: Vec<char> = p.chars().collect();
        let nc: Vec<char> = n.chars().collect();
        prop_assert_eq!(glob_matches(&p, &n), reference(&pc, &nc), "{} vs {}", p, n);
    }

    #[test]
    fn glob_never_panics(p in "[\\PC\\\\*?\\[\\]{},!-]{0,40}", n in "\\PC{0,30}") {
        if let Ok(g) = Glob::new(&p) {
            let _ = g.matches(&n);
        }
    }
}
