//! A small forward-only JSON scanner for the hot receive path: a pub push
//! is walked once, keys compared as bytes, values we do not need skipped
//! without building anything. Malformed input yields `None`, never a panic;
//! nesting is bounded so a hostile frame cannot exhaust the stack.

const MAX_DEPTH: usize = 64;

pub struct Scan<'a> {
    b: &'a [u8],
    pub i: usize,
}

impl<'a> Scan<'a> {
    pub fn new(b: &'a [u8]) -> Scan<'a> {
        Scan { b, i: 0 }
    }

    #[inline]
    pub fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline]
    pub fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek()? == c {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.i >= self.b.len()
    }

    /// A string's raw contents (escapes left as they are) and whether it
    /// has any.
    pub fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut esc = false;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Some((s, esc));
                }
                b'\\' => {
                    esc = true;
                    self.i += 2;
                }
                c if c < 0x20 => return None,
                _ => self.i += 1,
            }
        }
    }

    /// A non-negative integer (no fraction or exponent).
    pub fn u64(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
            self.i += 1;
        }
        if self.i == start || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(v)
    }

    pub fn bool(&mut self) -> Option<bool> {
        self.ws();
        let rest = self.b.get(self.i..)?;
        if rest.starts_with(b"true") {
            self.i += 4;
            Some(true)
        } else if rest.starts_with(b"false") {
            self.i += 5;
            Some(false)
        } else {
            None
        }
    }

    /// Skips one value of any type; returns its span.
    pub fn skip(&mut self) -> Option<(usize, usize)> {
        self.ws();
        let start = self.i;
        self.skip_depth(0)?;
        Some((start, self.i))
    }

    fn skip_depth(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => {
                self.i += 1;
                if self.eat(b'}').is_some() {
                    return Some(());
                }
                loop {
                    self.string()?;
                    self.eat(b':')?;
                    self.skip_depth(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b'}' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.i += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.skip_depth(depth + 1)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.i += 1;
                }
                let lit = &self.b[start..self.i];
                let ok = lit == b"true"
                    || lit == b"false"
                    || lit == b"null"
                    || (!lit.is_empty()
                        && lit.iter().all(|c| {
                            c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')
                        }));
                ok.then_some(())
            }
        }
    }

    /// Walks an array, calling `f` positioned at each element; `f` must
    /// consume it.
    pub fn array(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Walks an object, calling `f` with each key (raw bytes) positioned
    /// at its value; `f` must consume the value.
    pub fn object(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let (key, _) = self.string()?;
            self.eat(b':')?;
            f(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Writes `s` as a JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &c in s.as_bytes() {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            c if c < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(c >> 4) as usize]);
                out.push(HEX[(c & 15) as usize]);
            }
            c => out.push(c),
        }
    }
    out.push(b'"');
}

pub fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_and_skips() {
        let doc = br#" { "a" : [1, -2.5e3, {"x":"y\"z"}], "b":true, "c":null, "n": 18446744073709551615 } "#;
        let mut s = Scan::new(doc);
        let mut seen = Vec::new();
        s.object(|s, k| {
            seen.push(k.to_vec());
            if k == b"n" {
                assert_eq!(s.u64(), Some(u64::MAX));
                Some(())
            } else {
                s.skip().map(|_| ())
            }
        })
        .unwrap();
        assert!(s.at_end());
        assert_eq!(
            seen,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"n".to_vec()]
        );
    }

    #[test]
    fn rejects_malformed_without_panicking() {
        for bad in [
            &b"{"[..],
            b"{\"a\"",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":tru}",
            b"[[[[",
            b"{\"a\":1 \"b\":2}",
            b"\"\\",
        ] {
            let mut s = Scan::new(bad);
            assert!(s.skip().is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(10_000);
        assert!(Scan::new(deep.as_bytes()).skip().is_none());
        assert_eq!(Scan::new(b"18446744073709551616").u64(), None);
        assert_eq!(Scan::new(b"1.5").u64(), None);
    }

    #[test]
    fn writes_escaped_strings_and_numbers() {
        let mut o = Vec::new();
        write_str(&mut o, "a\"b\\c\n");
        o.push(b' ');
        write_u64(&mut o, 0);
        o.push(b' ');
        write_u64(&mut o, u64::MAX);
        assert_eq!(o, br#""a\"b\\c\u000a" 0 18446744073709551615"#);
        let v: String =
            serde_json::from_slice(&o[..o.iter().position(|&c| c == b' ').unwrap()]).unwrap();
        assert_eq!(v, "a\"b\\c\n");
    }
}
