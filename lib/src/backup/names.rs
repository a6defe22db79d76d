//! The one place dockhand makes a name out of a user's database name: the databases it
//! creates (restore targets, drill databases) and the file and object names of
//! backups. PostgreSQL silently cuts an identifier to 63 bytes (in the server's
//! encoding), so a name made by appending to a long database name could be cut back
//! to the database's own name, or two names could be cut to the same one. Names made
//! here fit their limit and stay distinct: a name too long is cut at a character
//! boundary and a short hash of the whole original is added; the suffix (a time, a
//! counter) is never cut.

use sha2::{Digest, Sha256};

/// PostgreSQL's identifier limit in bytes (`NAMEDATALEN - 1` in a default build; the
/// server reports its own as `max_identifier_length`).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The eight hex digits of `s`'s SHA-256 that make a cut name unique.
pub fn short_hash(s: &str) -> String {
    super::hex(&Sha256::digest(s.as_bytes())[..4])
}

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `BASE` + `suffix` when that fits `max` bytes; otherwise `BASE` cut at a character
/// boundary, `_`, eight hex digits of the whole base's SHA-256, then `suffix`. Two
/// bases that differ anywhere give different names (up to a 32-bit hash collision),
/// and the suffix is kept whole, so `x_restore_<time>` never loses its time. Used for
/// every database dockhand creates.
pub fn database_name(base: &str, suffix: &str, max: usize) -> String {
    let whole = format!("{base}{suffix}");
    if whole.len() <= max {
        return whole;
    }
    let hash = short_hash(base);
    let tail = format!("_{hash}{suffix}");
    if tail.len() > max {
        // A limit too small for the suffix: the hash alone still tells bases apart.
        return cut(&format!("{hash}{suffix}"), max).to_string();
    }
    format!("{}{tail}", cut(base, max - tail.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_whole() {
        assert_eq!(
            database_name("app", "_restore_20261207_101010", 63),
            "app_restore_20261207_101010"
        );
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_keep_their_suffix() {
        let suffix = "_restore_20261207_101010";
        for len in 30..=63 {
            let base = "d".repeat(len);
            let name = database_name(&base, suffix, 63);
            assert!(name.len() <= 63, "{len}: {name}");
            assert!(name.ends_with(suffix), "{len}: {name}");
            assert_ne!(name, base);
            // a later restore (another suffix) never collides with this one
            assert_ne!(database_name(&base, "_restore_20261207_101011", 63), name);
        }
        // two long names that differ only at the end stay distinct
        let a = format!("{}a", "x".repeat(62));
        let b = format!("{}b", "x".repeat(62));
        assert_ne!(database_name(&a, suffix, 63), database_name(&b, suffix, 63));
    }

    #[test]
    fn cuts_respect_character_boundaries() {
        let base = "é".repeat(31) + "x"; // 63 bytes
        for max in 33..=63 {
            let name = database_name(&base, "_restore_20261207_101010", max);
            assert!(name.len() <= max, "{max}: {name}");
            assert!(name.ends_with("_restore_20261207_101010"));
        }
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("日本", 5), "日");
        assert_eq!(database_name("x", "_a_very_long_suffix", 10).len(), 10);
    }
}
