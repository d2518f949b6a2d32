//! Host ranges as Ansible writes them: `web[01:20].example.com` (numeric, zero-padded when
//! the start is), `db-[a:f]` (alphabetic), an optional stride `[0:10:5]`; several ranges in one
//! name multiply.

/// The names `pattern` stands for (itself when it holds no range), or what is wrong with it.
pub(crate) fn expand(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else {
        if pattern.contains(']') {
            return Err(format!("{pattern:?} has a `]` without `[`"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..].find(']').map(|i| open + i).ok_or_else(|| {
        format!("{pattern:?} has a `[` without `]` (expected a range like [01:20])")
    })?;
    let head = &pattern[..open];
    let inner = &pattern[open + 1..close];
    let tail = expand(&pattern[close + 1..])?;
    let bad = || {
        format!(
            "{pattern:?}: expected a range [start:end] or [start:end:step] of numbers or of \
             letters, found [{inner}]"
        )
    };
    let parts: Vec<&str> = inner.split(':').collect();
    let (start, end, step) = match parts.as_slice() {
        [s, e] => (*s, *e, 1usize),
        [s, e, st] => (
            *s,
            *e,
            st.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(bad)?,
        ),
        _ => return Err(bad()),
    };
    let mut heads = Vec::new();
    if let (Ok(a), Ok(b)) = (start.parse::<u64>(), end.parse::<u64>()) {
        if a > b {
            return Err(format!(
                "{pattern:?}: the range [{inner}] ends before it starts"
            ));
        }
        if (b - a) / step as u64 > 100_000 {
            return Err(format!(
                "{pattern:?}: the range [{inner}] holds more than 100000 hosts"
            ));
        }
        let width = if start.len() > 1 && start.starts_with('0') {
            start.len()
        } else {
            0
        };
        let mut n = a;
        while n <= b {
            heads.push(format!("{head}{n:0width$}"));
            n += step as u64;
        }
    } else if start.len() == 1
        && end.len() == 1
        && start.chars().all(|c| c.is_ascii_alphabetic())
        && end.chars().all(|c| c.is_ascii_alphabetic())
    {
        let (a, b) = (start.as_bytes()[0], end.as_bytes()[0]);
        if a > b {
            return Err(format!(
                "{pattern:?}: the range [{inner}] ends before it starts"
            ));
        }
        let mut c = a;
        while c <= b {
            heads.push(format!("{head}{}", c as char));
            c = match c.checked_add(step as u8) {
                Some(c) if step < 256 => c,
                _ => break,
            };
        }
    } else {
        return Err(bad());
    }
    Ok(heads
        .iter()
        .flat_map(|h| tail.iter().map(move |t| format!("{h}{t}")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn numeric_alphabetic_padded_stride_and_several() {
        assert_eq!(expand("web1").unwrap(), ["web1"]);
        assert_eq!(
            expand("web[01:03].example.com").unwrap(),
            [
                "web01.example.com",
                "web02.example.com",
                "web03.example.com"
            ]
        );
        assert_eq!(expand("n[8:10]").unwrap(), ["n8", "n9", "n10"]);
        assert_eq!(expand("db-[a:c]").unwrap(), ["db-a", "db-b", "db-c"]);
        assert_eq!(expand("n[0:10:5]").unwrap(), ["n0", "n5", "n10"]);
        assert_eq!(
            expand("r[1:2]x[a:b]").unwrap(),
            ["r1xa", "r1xb", "r2xa", "r2xb"]
        );
    }

    #[test]
    fn bad_ranges_say_what_was_expected() {
        assert_eq!(
            expand("web[01:20").unwrap_err(),
            "\"web[01:20\" has a `[` without `]` (expected a range like [01:20])"
        );
        assert_eq!(
            expand("web[3:1]").unwrap_err(),
            "\"web[3:1]\": the range [3:1] ends before it starts"
        );
        assert_eq!(
            expand("web[1-3]").unwrap_err(),
            "\"web[1-3]\": expected a range [start:end] or [start:end:step] of numbers or of \
             letters, found [1-3]"
        );
        assert!(
            expand("web[0:9999999]")
                .unwrap_err()
                .contains("more than 100000")
        );
    }
}
