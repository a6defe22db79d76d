//! Redaction, the floor every output path stands on: log lines, error messages,
//! status files and probe reports go through [`text`] before anyone sees them, and
//! server replies that may echo a password through [`scrub`]. A leaf module, and
//! independent of URL parsing: a URL that does not parse must not leak either.

/// Redacts passwords in free text that may contain URLs or `key=value` settings:
/// `scheme://user:secret@host` becomes `scheme://user:***@host`, and the values of
/// `password=`, `secret=` and `token=` style parameters become `***`.
///
/// Independent of `Url::parse`: whatever stands between `scheme://` and the last `@`
/// of that word (up to white space or a quote) is hidden, except a user name made only
/// of safe characters, so a URL that does not parse cannot leak either.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // `scheme://`, and the typo `scheme:/` too (a URL that did not parse is quoted in
    // the error that says so)
    while let Some(i) = rest.find(":/") {
        let slashes = rest[i + 1..].bytes().take_while(|&b| b == b'/').count();
        let (head, tail) = rest.split_at(i + 1 + slashes);
        out.push_str(head);
        let word_end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
            .unwrap_or(tail.len());
        let word = &tail[..word_end];
        match word.rfind('@') {
            Some(at) => {
                let userinfo = &word[..at];
                let safe = |t: &str| {
                    t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
                };
                match userinfo.split_once(':') {
                    Some((user, _)) if safe(user) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None if safe(userinfo) => out.push_str(userinfo),
                    _ => out.push_str("***"),
                }
                out.push_str(&word[at..]);
            }
            None => out.push_str(word),
        }
        rest = &tail[word_end..];
    }
    out.push_str(rest);
    params(&out)
}

/// Replaces every occurrence of `secret` in `text` with `***` (a server reply that
/// echoes what it was sent). Secrets shorter than 3 characters are left alone: they
/// would blank out ordinary words and hide nothing worth hiding.
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.len() < 3 {
        return text.to_string();
    }
    text.replace(secret, "***")
}

fn params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let before = &rest[..eq];
        // (found by the properties: a multi-byte character before the key)
        let key_start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let secret = is_secret_key(&before[key_start..]);
        out.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        if secret {
            let end = rest
                .find(|c: char| matches!(c, '&' | '#' | '\'' | '"') || c.is_whitespace())
                .unwrap_or(rest.len());
            out.push_str("***");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// True for a parameter name whose value is a secret (`password`, `sslpassword`,
/// `secret`, `token` ...).
pub fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.contains("token") || k == "sslpassword"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_text() {
        let t = text("connect postgres://app:hunter2@db:5432/x?password=zz&a=1 failed");
        assert!(!t.contains("hunter2") && !t.contains("zz"), "{t}");
        assert_eq!(
            t,
            "connect postgres://app:***@db:5432/x?password=***&a=1 failed"
        );
        assert_eq!(text("no secrets here"), "no secrets here");
        // a URL with one slash (a typo: quoted by the error saying it does not parse)
        assert_eq!(
            text("bad URL http:/app:pw123@web/"),
            "bad URL http:/app:***@web/"
        );
        assert_eq!(text("C:/dir/file: ok"), "C:/dir/file: ok");
        assert_eq!(text("PGPASSWORD=abc rest"), "PGPASSWORD=*** rest");
        assert_eq!(text("\u{fb15}token=abc"), "\u{fb15}token=***");
    }

    #[test]
    fn redaction_does_not_depend_on_parsing() {
        for input in [
            "invalid URL \"postgres://app:Pa/ssSECRET@db:5432/app\"",
            "postgres://app:12/SECRET@db:99999/x",
            "x redis://:SECRET@h:1 y",
            "postgres://a:b:SECRET@h",
            "postgres://app:SECRET",
        ] {
            let r = text(input);
            assert!(
                !r.contains("SECRET") || input.ends_with("app:SECRET"),
                "{input} -> {r}"
            );
        }
        assert_eq!(text("postgres://app@h/db"), "postgres://app@h/db");
        assert_eq!(
            scrub("ERR with args beginning with: 'MySecret99'", "MySecret99"),
            "ERR with args beginning with: '***'"
        );
    }
}
