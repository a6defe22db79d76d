//! Restoring a globals backup (`pg_dumpall --globals-only`) into a cluster that already
//! has roles: the one it came from, or a fresh one (whose bootstrap superuser the
//! script creates too). The script says `CREATE ROLE x;` then `ALTER ROLE x WITH ...`
//! for every role, so run as is in one transaction it stops at the first role that
//! exists. It is rewritten statement by statement instead: `CREATE ROLE` only for the
//! roles that do not exist (the `ALTER ROLE` after it updates the others' attributes;
//! memberships, settings and comments are kept as they are), and never a `DROP`.
//! `CREATE TABLESPACE` cannot run in a transaction block: a missing tablespace is
//! created before the transaction (and dropped again if it fails), its owner set inside.
//! The role the restore connects as keeps its password, so the restore cannot lock its
//! own deployment out of a cluster whose superuser password differs from the source's.

use std::collections::HashSet;

/// What the restore does, decided before anything reaches the cluster.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The script for `psql --single-transaction`.
    pub script: String,
    /// `CREATE TABLESPACE` statements to run first, one by one: (name, SQL).
    pub create_tablespaces: Vec<(String, String)>,
    pub roles_created: Vec<String>,
    pub roles_updated: Vec<String>,
    pub tablespaces_created: Vec<String>,
    pub tablespaces_updated: Vec<String>,
    /// The role the restore connects as, when the backup held a password for it that
    /// was not applied.
    pub kept_password: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A keyword or unquoted identifier, folded to lower case.
    Word(String),
    /// A quoted identifier, unescaped.
    Quoted(String),
    /// A string literal (any kind).
    Str,
    Other(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

impl Token {
    fn new(tok: Tok, start: usize, end: usize) -> Token {
        Token { tok, start, end }
    }
}

/// One statement (with the whitespace and comments before it) or a psql meta-command.
#[derive(Debug)]
struct Piece<'a> {
    text: &'a str,
    /// Where the text starts in the script (token offsets are script offsets).
    at: usize,
    tokens: Vec<Token>,
}

impl<'a> Piece<'a> {
    /// The script's text from `start` to `end`, with its tokens.
    fn new(script: &'a str, start: usize, end: usize, tokens: Vec<Token>) -> Piece<'a> {
        Piece {
            text: &script[start..end],
            at: start,
            tokens,
        }
    }
}

/// Splits a psql script into statements at top-level semicolons, reading string
/// literals (`'..'`, `E'..'`, dollar quotes), quoted identifiers and comments so a
/// semicolon inside any of them does not end a statement. The loop is the lexer's one
/// state machine, on the byte that starts each token; each token's scan is a function
/// of its own.
fn split(script: &str) -> Result<Vec<Piece<'_>>, String> {
    let b = script.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut start) = (0usize, 0usize);
    let mut tokens: Vec<Token> = Vec::new();
    let mut std_strings = true;
    let unterminated = |what: &str, at: usize| {
        let line = script[..at].matches('\n').count() + 1;
        format!("line {line}: unterminated {what}")
    };
    while i < b.len() {
        let c = b[i];
        let from = i;
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            i = line_end(script, i);
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = comment_end(b, i).ok_or_else(|| unterminated("comment", from))?;
        } else if c == b'\\' && tokens.is_empty() {
            // A psql meta-command (`\restrict KEY`): the rest of the line.
            let end = line_end(script, i);
            out.push(Piece::new(script, start, end, Vec::new()));
            i = end;
            start = end;
        } else if c == b'\'' {
            let e_prefix = tokens
                .last()
                .is_some_and(|t| t.end == i && t.tok == Tok::Word("e".into()));
            if e_prefix {
                tokens.pop(); // E'...': a string with backslash escapes
            }
            let escapes = e_prefix || !std_strings;
            i = string_end(b, i, escapes).ok_or_else(|| unterminated("string", from))?;
            tokens.push(Token::new(Tok::Str, from, i));
        } else if c == b'"' {
            let (end, name) =
                quoted_identifier(b, i).ok_or_else(|| unterminated("quoted identifier", from))?;
            i = end;
            tokens.push(Token::new(Tok::Quoted(name), from, i));
        } else if c == b'$' && dollar_tag(&script[i..]).is_some() {
            let tag = dollar_tag(&script[i..]).unwrap_or("$$");
            let body = i + tag.len();
            let close = script[body..]
                .find(tag)
                .ok_or_else(|| unterminated("dollar-quoted string", from))?;
            i = body + close + tag.len();
            tokens.push(Token::new(Tok::Str, from, i));
        } else if c == b';' {
            i += 1;
            let piece = Piece::new(script, start, i, std::mem::take(&mut tokens));
            std_strings = sets_standard_strings(&piece).unwrap_or(std_strings);
            out.push(piece);
            start = i;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            i = word_end(b, i);
            tokens.push(Token::new(
                Tok::Word(script[from..i].to_ascii_lowercase()),
                from,
                i,
            ));
        } else {
            let ch = script[i..].chars().next().unwrap_or('?');
            tokens.push(Token::new(Tok::Other(ch), i, i + ch.len_utf8()));
            i += ch.len_utf8();
        }
    }
    if start < b.len() {
        out.push(Piece {
            text: &script[start..],
            at: start,
            tokens,
        });
    }
    Ok(out)
}

/// Just past the end of the line `i` is on (the script's end on its last line).
fn line_end(script: &str, i: usize) -> usize {
    script[i..].find('\n').map_or(script.len(), |n| i + n + 1)
}

/// Just past the block comment opening at `i` (`/* ... */`, nested ones counted);
/// `None` when it is not closed.
fn comment_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        if i + 1 >= b.len() {
            return None;
        }
        if b[i] == b'/' && b[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
}

/// Just past the string literal opening at `i` (`''` is a quote inside it; with
/// `escapes`, a backslash escapes the next byte); `None` when it is not closed.
fn string_end(b: &[u8], mut i: usize, escapes: bool) -> Option<usize> {
    i += 1;
    loop {
        match b.get(i) {
            None => return None,
            Some(b'\\') if escapes => i += 2,
            Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
            Some(b'\'') => return Some(i + 1),
            Some(_) => i += 1,
        }
    }
}

/// Just past the quoted identifier opening at `i`, and the name it spells (`""` is
/// a quote); `None` when it is not closed.
fn quoted_identifier(b: &[u8], mut i: usize) -> Option<(usize, String)> {
    let mut name = Vec::new();
    i += 1;
    loop {
        match b.get(i) {
            None => return None,
            Some(b'"') if b.get(i + 1) == Some(&b'"') => {
                name.push(b'"');
                i += 2;
            }
            Some(b'"') => return Some((i + 1, String::from_utf8_lossy(&name).into_owned())),
            Some(&x) => {
                name.push(x);
                i += 1;
            }
        }
    }
}

/// The end of the keyword or unquoted identifier starting at `i`.
fn word_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len()
        && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
    {
        i += 1;
    }
    i
}

/// What `SET standard_conforming_strings = value` sets, when `piece` is that.
fn sets_standard_strings(piece: &Piece) -> Option<bool> {
    match kinds(piece).as_slice() {
        [Tok::Word(set), Tok::Word(name), _, value]
            if set == "set" && name == "standard_conforming_strings" =>
        {
            Some(*value != Tok::Word("off".into()))
        }
        _ => None,
    }
}

/// `$tag$` at the start of `s`, if it opens a dollar quote.
fn dollar_tag(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let mut j = 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        if j == 1 && b[j].is_ascii_digit() {
            return None; // $1 is a parameter
        }
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then(|| &s[..=j])
}

fn kinds(p: &Piece) -> Vec<Tok> {
    p.tokens.iter().map(|t| t.tok.clone()).collect()
}

/// A role or tablespace name token, decoded.
fn name_of(t: &Tok) -> Option<String> {
    match t {
        Tok::Word(w) => Some(w.clone()),
        Tok::Quoted(q) => Some(q.clone()),
        _ => None,
    }
}

fn word(t: &Tok, w: &str) -> bool {
    matches!(t, Tok::Word(x) if x == w)
}

impl Plan {
    /// `CREATE TABLESPACE name OWNER owner LOCATION location` (as written in the
    /// script): a missing tablespace is created before the transaction, its owner is
    /// set inside it.
    fn tablespace(
        &mut self,
        name: String,
        raw_name: &str,
        owner: &str,
        location: &str,
        lead: &str,
        tablespaces: &HashSet<String>,
    ) {
        if tablespaces.contains(&name) {
            self.tablespaces_updated.push(name);
        } else {
            self.create_tablespaces.push((
                name.clone(),
                format!("CREATE TABLESPACE {raw_name} LOCATION {location}"),
            ));
            self.tablespaces_created.push(name);
        }
        self.script.push_str(lead);
        self.script
            .push_str(&format!("ALTER TABLESPACE {raw_name} OWNER TO {owner};"));
    }
}

/// Plans the restore of `script` into a cluster that has `roles` and `tablespaces`,
/// connected as `current_user`.
pub fn plan(
    script: &str,
    roles: &HashSet<String>,
    tablespaces: &HashSet<String>,
    current_user: &str,
) -> Result<Plan, String> {
    let mut p = Plan::default();
    for piece in split(script)? {
        let k = kinds(&piece);
        let t = &piece.tokens;
        let raw = |i: usize| &script[t[i].start..t[i].end];
        let lead = &piece.text[..t.first().map_or(0, |t| t.start - piece.at)];
        match k.as_slice() {
            [c, r, n] if word(c, "create") && word(r, "role") => {
                let Some(name) = name_of(n) else {
                    return Err(format!("unexpected statement: {}", piece.text.trim()));
                };
                if roles.contains(&name) {
                    // exists: the ALTER ROLE that follows updates it
                    p.roles_updated.push(name);
                    p.script.push_str(lead);
                } else {
                    p.roles_created.push(name);
                    p.script.push_str(piece.text);
                }
            }
            [a, r, n, w, ..] if word(a, "alter") && word(r, "role") && word(w, "with") => {
                let name = name_of(n);
                let pw = k.iter().position(|x| word(x, "password"));
                match (name, pw) {
                    (Some(name), Some(i)) if name == current_user && i + 1 < k.len() => {
                        // the role this restore logs in as keeps its password
                        let from = t[i].start - piece.at;
                        let to = t[i + 1].end - piece.at;
                        p.script.push_str(&piece.text[..from]);
                        p.script.push_str(&piece.text[to..]);
                        p.kept_password = Some(name);
                    }
                    _ => p.script.push_str(piece.text),
                }
            }
            [c, s, n, o, owner, l, Tok::Str]
                if word(c, "create")
                    && word(s, "tablespace")
                    && word(o, "owner")
                    && word(l, "location") =>
            {
                let (Some(name), Some(_)) = (name_of(n), name_of(owner)) else {
                    return Err(format!("unexpected statement: {}", piece.text.trim()));
                };
                p.tablespace(name, raw(2), raw(4), raw(6), lead, tablespaces);
            }
            [c, s, ..] if word(c, "create") && word(s, "tablespace") => {
                return Err(format!(
                    "unexpected CREATE TABLESPACE form: {}",
                    piece.text.trim()
                ));
            }
            [d, ..] if word(d, "drop") => {
                // pg_dumpall --clean output: a restore never drops anything
                return Err(format!(
                    "the backup drops something ({}): dockhand never restores a DROP",
                    piece.text.trim()
                ));
            }
            _ => p.script.push_str(piece.text),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"--
-- PostgreSQL database cluster dump
--

\restrict pelKaamgTbARhBUrFdR4FCqQxaZ1OjnslGqI8puY21YxwWLankJrWpFKA6m28jq

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:Wk;==$pz''t';
COMMENT ON ROLE app IS 'hi; there';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS PASSWORD 'md5abc';
CREATE ROLE "we""ird; role";
ALTER ROLE "we""ird; role" WITH NOSUPERUSER NOLOGIN;
ALTER ROLE app SET search_path TO 'a;b', 'public';
GRANT app TO "we""ird; role" GRANTED BY postgres;

CREATE TABLESPACE ts OWNER app LOCATION '/tmp/hr;ts';
ALTER TABLESPACE ts SET (seq_page_cost=2);
CREATE TABLESPACE "old ts" OWNER "we""ird; role" LOCATION '/srv/old';

\unrestrict pelKaamgTbARhBUrFdR4FCqQxaZ1OjnslGqI8puY21YxwWLankJrWpFKA6m28jq
"#;

    fn set(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn existing_roles_are_updated_and_missing_ones_created() {
        let p = plan(
            SCRIPT,
            &set(&["postgres", "app"]),
            &set(&["old ts"]),
            "postgres",
        )
        .unwrap();
        assert_eq!(p.roles_created, ["we\"ird; role"]);
        assert_eq!(p.roles_updated, ["app", "postgres"]);
        assert_eq!(p.tablespaces_created, ["ts"]);
        assert_eq!(p.tablespaces_updated, ["old ts"]);
        assert_eq!(
            p.create_tablespaces,
            [(
                "ts".to_string(),
                "CREATE TABLESPACE ts LOCATION '/tmp/hr;ts'".to_string()
            )]
        );
        assert_eq!(p.kept_password.as_deref(), Some("postgres"));
        let s = &p.script;
        assert!(
            !s.contains("CREATE ROLE app;") && !s.contains("CREATE ROLE postgres;"),
            "{s}"
        );
        assert!(s.contains("CREATE ROLE \"we\"\"ird; role\";"), "{s}");
        assert!(s.contains("ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:Wk;==$pz''t';"));
        assert!(s.contains("ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS ;"), "{s}");
        assert!(!s.contains("md5abc"));
        assert!(s.contains("COMMENT ON ROLE app IS 'hi; there';"));
        assert!(s.contains("ALTER ROLE app SET search_path TO 'a;b', 'public';"));
        assert!(s.contains("ALTER TABLESPACE ts OWNER TO app;"));
        assert!(s.contains("ALTER TABLESPACE \"old ts\" OWNER TO \"we\"\"ird; role\";"));
        assert!(!s.contains("CREATE TABLESPACE"));
        assert!(s.contains("\\restrict pelKaam") && s.contains("\\unrestrict pelKaam"));
    }

    #[test]
    fn into_an_empty_cluster_everything_is_created() {
        let p = plan(SCRIPT, &set(&[]), &set(&[]), "someone").unwrap();
        assert_eq!(p.roles_created.len(), 3);
        assert!(p.roles_updated.is_empty());
        assert_eq!(p.kept_password, None);
        assert!(p.script.contains("md5abc"));
    }

    #[test]
    fn quotes_and_comments_do_not_end_statements() {
        let s = "SET standard_conforming_strings = off;\nCOMMENT ON ROLE a IS 'x\\'; CREATE ROLE b;';\n/* ; /* ; */ */ CREATE ROLE c; -- ; \nSELECT $f$;$f$, E'\\';';\nCREATE ROLE d";
        let p = plan(s, &set(&[]), &set(&[]), "x").unwrap();
        assert_eq!(p.roles_created, ["c", "d"]);
        assert_eq!(p.script, s);
        assert!(plan("CREATE ROLE 'x", &set(&[]), &set(&[]), "x").is_err());
        assert!(plan("DROP ROLE x;", &set(&[]), &set(&[]), "x").is_err());
    }
}
