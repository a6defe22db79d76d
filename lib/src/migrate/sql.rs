//! Just enough SQL lexing to see a migration script's statements the way the server
//! will: split on `;` outside string literals, quoted identifiers, dollar quotes,
//! comments and SQL-standard function bodies (`BEGIN ATOMIC ... END`), as psql does.
//! Used to tell statements that cannot run in a transaction block
//! (`CREATE INDEX CONCURRENTLY`, ...) and a script's own transaction control
//! (`BEGIN; ... COMMIT;`) apart; never to change what is sent.

/// One statement of a script: its text (without the `;`) and its leading keywords,
/// upper-cased, comments skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    pub text: &'a str,
    pub words: Vec<String>,
}

impl Statement<'_> {
    fn starts(&self, seq: &[&str]) -> bool {
        self.words.len() >= seq.len() && self.words.iter().zip(seq).all(|(w, s)| w == s)
    }

    fn has(&self, word: &str) -> bool {
        self.words.iter().any(|w| w == word)
    }
}

/// How many leading words are kept per statement (enough to classify it).
const WORDS: usize = 32;

/// The script's statements, empty ones (only blanks and comments) left out. The loop
/// is the lexer's one state machine; each quoted or commented span is skipped by a
/// function of its own.
pub fn split(script: &str) -> Vec<Statement<'_>> {
    let b = script.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut words: Vec<String> = Vec::new();
    // BEGIN/CASE ... END nesting inside CREATE FUNCTION/PROCEDURE (BEGIN ATOMIC bodies)
    let mut depth = 0usize;
    let mut word_start: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        let is_word = c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
        if is_word {
            if word_start.is_none() {
                word_start = Some(i);
            }
            i += 1;
            continue;
        }
        if let Some(s) = word_start.take() {
            end_word(&script[s..i], &mut words, &mut depth);
        }
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = script[i..].find('\n').map_or(b.len(), |n| i + n + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = comment_end(b, i),
            b'\'' | b'"' => i = quoted_end(b, i),
            b'$' => i = dollar_quote_end(script, i),
            b';' if depth == 0 => {
                push(&mut out, &script[start..i], std::mem::take(&mut words));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if let Some(s) = word_start {
        end_word(&script[s..], &mut words, &mut depth);
    }
    push(&mut out, &script[start..], words);
    out
}

/// A statement's word `w` has ended: it is kept (upper-cased), and inside
/// CREATE FUNCTION/PROCEDURE it moves the BEGIN/CASE ... END `depth`.
fn end_word(w: &str, words: &mut Vec<String>, depth: &mut usize) {
    let w = w.to_ascii_uppercase();
    if routine(words) {
        match w.as_str() {
            "BEGIN" | "CASE" => *depth += 1,
            "END" => *depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    words.push(w);
}

/// True when the statement so far is a CREATE FUNCTION or PROCEDURE.
fn routine(w: &[String]) -> bool {
    w.first().is_some_and(|f| f == "CREATE")
        && w.iter()
            .skip(1)
            .take(3)
            .any(|x| x == "FUNCTION" || x == "PROCEDURE")
}

/// Just past the block comment opening at `i` (nested, as PostgreSQL's are); the end
/// of the script when it is not closed.
fn comment_end(b: &[u8], mut i: usize) -> usize {
    let mut level = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            level += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            level -= 1;
            i += 2;
            if level == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Just past the string literal or quoted identifier opening at `i` (its quote
/// doubled is a quote inside it; an E'' string escapes with backslashes); the end of
/// the script when it is not closed.
fn quoted_end(b: &[u8], mut i: usize) -> usize {
    let c = b[i];
    // E'' strings escape with backslashes
    let backslash = c == b'\''
        && i > 0
        && (b[i - 1] == b'E' || b[i - 1] == b'e')
        && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_'));
    i += 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
        } else if b[i] == c {
            if b.get(i + 1) == Some(&c) {
                i += 2;
            } else {
                i += 1;
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// Just past the dollar quote opening at `i` (`$tag$ ... $tag$`; the end of the script
/// when it is not closed); `i + 1` when the `$` opens none (a `$1` parameter is not a
/// quote).
fn dollar_quote_end(script: &str, i: usize) -> usize {
    let b = script.as_bytes();
    let tag_end = script[i + 1..]
        .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
        .map(|n| i + 1 + n);
    match tag_end {
        Some(e) if b[e] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
            let tag = &script[i..=e];
            script[e + 1..]
                .find(tag)
                .map_or(b.len(), |n| e + 1 + n + tag.len())
        }
        _ => i + 1,
    }
}

fn push<'a>(out: &mut Vec<Statement<'a>>, text: &'a str, mut words: Vec<String>) {
    if words.is_empty() {
        return;
    }
    words.truncate(WORDS);
    out.push(Statement {
        text: text.trim(),
        words,
    });
}

/// A statement that PostgreSQL refuses inside a transaction block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonTransactional {
    /// What it is, for messages (`CREATE INDEX CONCURRENTLY`).
    pub what: &'static str,
    /// It waits, by design, for transactions older than itself to end: `lock_timeout`
    /// cuts that wait short and leaves its work half done (an INVALID index), so it
    /// runs without it.
    pub waits_for_old_transactions: bool,
}

/// Whether `s` cannot run inside a transaction block, and what it is.
pub fn non_transactional(s: &Statement<'_>) -> Option<NonTransactional> {
    let nt = |what, waits| {
        Some(NonTransactional {
            what,
            waits_for_old_transactions: waits,
        })
    };
    let create_index = s.starts(&["CREATE", "INDEX"]) || s.starts(&["CREATE", "UNIQUE", "INDEX"]);
    if create_index && s.has("CONCURRENTLY") {
        return nt("CREATE INDEX CONCURRENTLY", true);
    }
    if s.starts(&["REINDEX"]) {
        if s.has("CONCURRENTLY") {
            return nt("REINDEX CONCURRENTLY", true);
        }
        if s.starts(&["REINDEX", "DATABASE"]) || s.starts(&["REINDEX", "SYSTEM"]) {
            return nt("REINDEX DATABASE", false);
        }
    }
    if s.starts(&["DROP", "INDEX", "CONCURRENTLY"]) {
        return nt("DROP INDEX CONCURRENTLY", true);
    }
    if s.starts(&["ALTER", "TABLE"]) && s.has("DETACH") && s.has("CONCURRENTLY") {
        return nt("DETACH PARTITION CONCURRENTLY", true);
    }
    if s.starts(&["VACUUM"]) {
        return nt("VACUUM", false);
    }
    if s.starts(&["ALTER", "TYPE"]) && s.has("ADD") && s.has("VALUE") {
        return nt("ALTER TYPE ... ADD VALUE", false);
    }
    for (seq, what) in [
        (&["CREATE", "DATABASE"][..], "CREATE DATABASE"),
        (&["DROP", "DATABASE"][..], "DROP DATABASE"),
        (&["CREATE", "TABLESPACE"][..], "CREATE TABLESPACE"),
        (&["DROP", "TABLESPACE"][..], "DROP TABLESPACE"),
        (&["ALTER", "SYSTEM"][..], "ALTER SYSTEM"),
    ] {
        if s.starts(seq) {
            return nt(what, false);
        }
    }
    None
}

/// Transaction control a script does itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxControl {
    Begin,
    End,
}

/// `BEGIN`/`START TRANSACTION`, or `COMMIT`/`END`/`ROLLBACK`/`ABORT` (not to a
/// savepoint, not a prepared transaction's).
pub fn tx_control(s: &Statement<'_>) -> Option<TxControl> {
    let first = s.words.first().map(String::as_str);
    match first {
        Some("BEGIN") => Some(TxControl::Begin),
        Some("START") if s.starts(&["START", "TRANSACTION"]) => Some(TxControl::Begin),
        Some("COMMIT" | "END" | "ROLLBACK" | "ABORT")
            if !s.has("PREPARED") && !s.has("TO") && !s.has("SAVEPOINT") =>
        {
            Some(TxControl::End)
        }
        _ => None,
    }
}

/// True when the script is all or nothing: it has no transaction control of its own
/// (one simple-query batch is one implicit transaction), or one `BEGIN` first and one
/// `COMMIT` last. A script that commits part way can leave some of its work applied
/// when a later statement fails.
pub fn is_atomic(stmts: &[Statement<'_>]) -> bool {
    let controls: Vec<(usize, TxControl)> = stmts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| tx_control(s).map(|c| (i, c)))
        .collect();
    match controls.as_slice() {
        [] => true,
        [(0, TxControl::Begin), (last, TxControl::End)] => *last == stmts.len() - 1,
        _ => false,
    }
}

/// The index a `CREATE INDEX CONCURRENTLY` names and the table it is on, as written
/// (quoted identifiers kept, for `to_regclass`); `None` when it names no index.
pub fn created_index(s: &Statement<'_>) -> Option<(String, String)> {
    let tokens = tokens(s.text);
    let mut i = 0;
    let upper = |t: &str| t.to_ascii_uppercase();
    // CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON [ONLY] table
    while i < tokens.len() && upper(&tokens[i]) != "CONCURRENTLY" {
        i += 1;
    }
    i += 1;
    if tokens.get(i).map(|t| upper(t)) == Some("IF".into()) {
        i += 3;
    }
    let name = tokens.get(i)?.clone();
    if upper(&name) == "ON" {
        return None;
    }
    if tokens.get(i + 1).map(|t| upper(t)) != Some("ON".into()) {
        return None;
    }
    let mut j = i + 2;
    if tokens.get(j).map(|t| upper(t)) == Some("ONLY".into()) {
        j += 1;
    }
    let table = tokens.get(j)?.clone();
    Some((unquote(&name), table))
}

/// Identifiers (quoted ones whole, with their quotes; `a.b` together) and words.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '-' && chars.peek() == Some(&'-') {
            for n in chars.by_ref() {
                if n == '\n' {
                    break;
                }
            }
        } else if c == '"' {
            cur.push(c);
            while let Some(q) = chars.next() {
                cur.push(q);
                if q == '"' {
                    if chars.peek() == Some(&'"') {
                        cur.push(chars.next().unwrap_or('"'));
                    } else {
                        break;
                    }
                }
            }
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '$' {
            cur.push(c);
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if c == '(' {
                break;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// An identifier's name: quotes removed (`""` is `"`), else folded to lower case.
fn unquote(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => ident.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(script: &str) -> Vec<String> {
        split(script).iter().map(|s| s.words[0].clone()).collect()
    }

    #[test]
    fn splits_like_the_server() {
        assert_eq!(
            kinds("-- CreateTable\nCREATE TABLE a (x text DEFAULT ';');\n/* a; /* nested; */ b; */ SELECT 1;\n\n-- end\n"),
            ["CREATE", "SELECT"]
        );
        assert_eq!(
            kinds("DO $$ BEGIN PERFORM 1; COMMIT; END $$; SELECT $1; SELECT E'\\';'; SELECT \"a;b\" FROM t"),
            ["DO", "SELECT", "SELECT", "SELECT"]
        );
        assert_eq!(
            kinds("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 2; END; COMMIT;"),
            ["CREATE", "COMMIT"]
        );
        assert!(split("  -- nothing\n/* at all */ ;; ").is_empty());
    }

    #[test]
    fn tells_what_cannot_run_in_a_transaction() {
        let one = |s: &str| non_transactional(&split(s)[0]).map(|n| n.what);
        assert_eq!(
            one("-- CreateIndex\nCREATE UNIQUE INDEX CONCURRENTLY \"u\" ON \"User\"(\"email\");"),
            Some("CREATE INDEX CONCURRENTLY")
        );
        assert_eq!(
            one("reindex index concurrently i"),
            Some("REINDEX CONCURRENTLY")
        );
        assert_eq!(one("VACUUM (ANALYZE) t"), Some("VACUUM"));
        assert_eq!(
            one("ALTER TYPE \"Role\" ADD VALUE 'X'"),
            Some("ALTER TYPE ... ADD VALUE")
        );
        assert_eq!(one("CREATE INDEX i ON t (c)"), None);
        assert_eq!(one("SELECT 'CREATE INDEX CONCURRENTLY'"), None);
    }

    #[test]
    fn finds_the_index_a_concurrent_build_creates() {
        let idx = |s: &str| created_index(&split(s)[0]);
        assert_eq!(
            idx("CREATE INDEX CONCURRENTLY \"Post_title_idx\" ON \"Post\"(\"title\");"),
            Some(("Post_title_idx".into(), "\"Post\"".into()))
        );
        assert_eq!(
            idx("create unique index concurrently if not exists Foo on only app.\"T\" using btree (x)"),
            Some(("foo".into(), "app.\"T\"".into()))
        );
        assert_eq!(idx("CREATE INDEX CONCURRENTLY ON t (x)"), None);
    }

    #[test]
    fn a_script_is_atomic_when_one_transaction_wraps_it_or_none() {
        let atomic = |s: &str| is_atomic(&split(s));
        assert!(atomic("CREATE TABLE a (x int); ALTER TABLE a ADD y int;"));
        assert!(atomic("BEGIN; CREATE TABLE a (x int); COMMIT;"));
        assert!(atomic(
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1; END;"
        ));
        assert!(!atomic("BEGIN; SELECT 1; COMMIT; BEGIN; SELECT 2; COMMIT;"));
        assert!(!atomic("SELECT 1; COMMIT;"));
        assert!(!atomic("BEGIN; SELECT 1;"));
        assert!(atomic(
            "BEGIN; SAVEPOINT s; ROLLBACK TO SAVEPOINT s; COMMIT;"
        ));
    }
}
