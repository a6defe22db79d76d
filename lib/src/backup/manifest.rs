//! A backup's manifest, `NAME.manifest.json`, and the names dockhand gives backups: a
//! leaf of the backup modules (archive writes manifests, catalog reads them, status
//! and retention describe them), so that what a backup is (a database or the
//! globals, zstd or gzip) is a type, not a string compared in five places. The JSON
//! is serde's, from the types; only the `format` check is by hand, before them.

use serde::{Deserialize, Serialize};

/// What a backup holds: one database, or the cluster's globals (roles, tablespaces).
/// Manifests written before `kind` existed hold a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    #[default]
    Database,
    Globals,
    /// A base backup of the whole cluster (`pg_basebackup`, tar), for point-in-time
    /// recovery with the WAL streamed beside it.
    Base,
    /// A WAL segment or timeline history file, streamed for point-in-time recovery.
    Wal,
}

impl Content {
    /// The manifest's word for it.
    pub fn name(self) -> &'static str {
        match self {
            Content::Database => "database",
            Content::Globals => "globals",
            Content::Base => "base",
            Content::Wal => "wal",
        }
    }

    /// The data file's middle extension: a custom-format dump, or plain SQL.
    pub fn ext(self) -> &'static str {
        match self {
            Content::Database => "dump",
            Content::Globals => "sql",
            Content::Base => "tar",
            Content::Wal => "wal",
        }
    }
}

/// How a backup's stream is compressed (zstd in manifests from before the choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Zstd,
    Gzip,
}

impl Algorithm {
    /// The manifest's word for it (`zstd`, `gzip`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zstd",
            Algorithm::Gzip => "gzip",
        }
    }

    /// The file name extension (`zst`, `gz`).
    pub fn ext(self) -> &'static str {
        match self {
            Algorithm::Zstd => "zst",
            Algorithm::Gzip => "gz",
        }
    }
}

/// A backup's description, stored beside it as `NAME.manifest.json`. Fields added
/// after the first release have defaults, so older manifests keep reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub file: String,
    #[serde(default)]
    pub kind: Content,
    pub database: String,
    #[serde(default)]
    pub server_version: String,
    #[serde(default)]
    pub pg_dump_version: String,
    /// Unix seconds.
    pub started: i64,
    pub finished: i64,
    /// Bytes pg_dump produced, and bytes stored.
    pub dump_bytes: u64,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub compression: Algorithm,
    #[serde(default)]
    pub level: i32,
    /// `age` (to the listed recipients) or none.
    pub encryption: Option<String>,
    #[serde(default)]
    pub recipients: Vec<String>,
    /// Unix seconds of the last successful `verify`.
    pub verified: Option<i64>,
    /// The exact row counts of the dump, counted in its own snapshot (`None` in
    /// manifests written before counts existed, and for the globals).
    pub counts: Option<Counts>,
    /// The last drill of this backup.
    pub drill: Option<Drill>,
    /// A base backup's WAL range: what recovery from it needs (three top-level
    /// fields, absent in other manifests).
    #[serde(flatten)]
    pub wal: Option<WalRange>,
}

/// The WAL a base backup needs to be consistent: from `start` to `end` (LSNs as
/// PostgreSQL writes them, `0/2000028`) on `timeline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRange {
    pub timeline: u32,
    #[serde(rename = "wal_start")]
    pub start: String,
    #[serde(rename = "wal_end")]
    pub end: String,
}

/// Rows per table and large objects, exactly as a dump holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// `(schema, table, rows)`, sorted by schema and table; stored as objects
    /// `{"schema", "table", "rows"}`.
    #[serde(with = "table_rows")]
    pub tables: Vec<(String, String, i64)>,
    #[serde(default)]
    pub large_objects: i64,
}

/// [`Counts::tables`] as JSON objects.
mod table_rows {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Row<S> {
        schema: S,
        table: S,
        rows: i64,
    }

    pub(super) fn serialize<Z: Serializer>(
        t: &[(String, String, i64)],
        s: Z,
    ) -> Result<Z::Ok, Z::Error> {
        s.collect_seq(t.iter().map(|(schema, table, rows)| Row {
            schema,
            table,
            rows: *rows,
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, String, i64)>, D::Error> {
        let rows = Vec::<Row<String>>::deserialize(d)?;
        Ok(rows
            .into_iter()
            .map(|r| (r.schema, r.table, r.rows))
            .collect())
    }
}

impl Counts {
    /// All rows of all tables.
    pub fn rows(&self) -> i64 {
        self.tables.iter().map(|t| t.2).sum()
    }
}

/// What a drill found: when, whether the backup restored with every count equal,
/// how long the restore took (the measured recovery time), and each difference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drill {
    /// Unix seconds when the drill finished.
    pub at: i64,
    pub ok: bool,
    /// Seconds the restore took.
    #[serde(default)]
    pub seconds: f64,
    /// Rows the backup holds that the restored copy lacks (all tables).
    #[serde(default)]
    pub rows_missing: i64,
    /// One line per difference or error; empty when ok.
    #[serde(default)]
    pub problems: Vec<String>,
}

impl Manifest {
    /// The JSON stored beside the backup: `format` first, then the fields.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Stored<'a> {
            format: u64,
            #[serde(flatten)]
            manifest: &'a Manifest,
        }
        serde_json::to_string_pretty(&Stored {
            format: FORMAT,
            manifest: self,
        })
        .unwrap_or_default()
    }

    /// Parses a manifest; `None` for anything that is not a well-formed dockhand
    /// manifest of a format this build reads ([`unreadable`] says why). The data file
    /// must be a plain name in the same place (a manifest naming `../x` is refused, so
    /// prune can never be led outside its folder).
    pub fn from_json(text: &str) -> Option<Manifest> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        // Manifests before `format` existed are format 1.
        if v.get("format").map_or(Some(1), serde_json::Value::as_u64) != Some(FORMAT) {
            return None;
        }
        let m: Manifest = serde_json::from_value(v).ok()?;
        let plain =
            |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('/') && !s.contains('\\');
        (plain(&m.name) && plain(&m.file) && m.file == m.expected_file()).then_some(m)
    }

    /// The only data file name this manifest may describe: `NAME.dump.zst`,
    /// `NAME.sql.gz.age` ... from its kind, compression and encryption. A manifest
    /// naming anything else (`status.json`, another backup's file) describes nothing
    /// dockhand wrote, so neither listing nor prune ever touches that file.
    pub fn expected_file(&self) -> String {
        let (kind, comp) = (self.kind.ext(), self.compression.ext());
        let age = if self.encryption.is_some() {
            ".age"
        } else {
            ""
        };
        format!("{}.{kind}.{comp}{age}", self.name)
    }

    /// The manifest's own file name.
    pub fn manifest_file(&self) -> String {
        manifest_file(&self.name)
    }

    /// The retention series: the database, or `globals`.
    pub fn series(&self) -> String {
        match self.kind {
            Content::Globals => "globals".into(),
            Content::Base => "base backups".into(),
            Content::Wal => "wal".into(),
            Content::Database => format!("database {}", self.database),
        }
    }

    /// The major version of the pg_dump that wrote it.
    pub fn pg_dump_major(&self) -> u32 {
        self.pg_dump_version
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.split('.').next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// The manifest file name of the backup `name`.
pub fn manifest_file(name: &str) -> String {
    format!("{name}.manifest.json")
}

/// The manifest format this build writes and reads. A newer one (written by a later
/// dockhand, with fields whose meaning this build does not know) is refused rather
/// than half read: `list`, `restore` and retention skip it and say why.
pub const FORMAT: u64 = 1;

/// Why `text` is not a manifest [`Manifest::from_json`] reads, for the warning of a
/// listing that skips it.
pub fn unreadable(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => "not valid JSON".into(),
        Ok(v) => match v["format"].as_u64() {
            Some(f) if f > FORMAT => format!(
                "manifest format {f}, newer than this backup reads ({FORMAT}): written by a later dockhand; upgrade it to use this backup"
            ),
            Some(f) if f != FORMAT => format!("manifest format {f}, which no dockhand writes"),
            _ => "not a dockhand manifest (a field is missing or malformed)".into(),
        },
    }
}

/// `YYYYmmddTHHMMSSZ` for file names.
pub fn stamp(secs: i64) -> String {
    let t = crate::time::rfc3339(secs, 0);
    t[..19].replace(['-', ':'], "") + "Z"
}

/// The time part of a backup's name: `YYYYmmddTHHMMSS.mmmZ-xxxx`, milliseconds and
/// four random hex digits, so two runs started in the same second (or the same
/// millisecond, on two sidecars sharing a bucket) never get the same name, and names
/// still sort by time.
pub fn unique_stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let t = stamp(secs);
    let mut x = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40) | 1;
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    format!(
        "{}.{:03}Z-{:04x}",
        t.trim_end_matches('Z'),
        now.subsec_millis(),
        x & 0xffff
    )
}

/// True when `file` is a data file name dockhand writes for names starting with
/// `prefix` (`app-`, `_globals-`): `PREFIX<stamp>.(dump|sql).(zst|gz)[.age]`, the stamp
/// exactly as [`unique_stamp`] (or, for older backups, [`stamp`]) writes it, so the
/// prefix `app-` never claims the backups of a database named `app-2026`.
pub fn is_own_data_file(file: &str, prefix: &str) -> bool {
    let Some(rest) = file.strip_prefix(prefix) else {
        return false;
    };
    let rest = rest.strip_suffix(".age").unwrap_or(rest);
    let Some(stem) = [
        ".dump.zst",
        ".dump.gz",
        ".sql.zst",
        ".sql.gz",
        ".tar.zst",
        ".tar.gz",
    ]
    .iter()
    .find_map(|ext| rest.strip_suffix(ext)) else {
        return false;
    };
    is_stamp(stem)
}

/// `YYYYmmddTHHMMSSZ` or `YYYYmmddTHHMMSS.mmmZ-xxxx`.
fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let head = b.len() >= 16 && digits(0..8) && b[8] == b'T' && digits(9..15);
    head && match b.len() {
        16 => b[15] == b'Z',
        25 => {
            b[15] == b'.'
                && digits(16..19)
                && &b[19..21] == b"Z-"
                && b[21..].iter().all(|c| b"0123456789abcdef".contains(c))
        }
        _ => false,
    }
}

/// A database name made safe for a file and object name: anything but `A-Za-z0-9._-`
/// becomes `_`. When that changed the name (or it is longer than 63 bytes, which only
/// a mistyped setting can be), it is cut and `~` and a hash of the whole name are
/// added (see [`super::names`]), so two databases never share a file name prefix
/// (`café` and `caf_`, `.x` and `x`) and a name always fits a file system's limit.
pub fn file_safe(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let out = out.trim_start_matches('.');
    if out == s && s.len() <= super::names::MAX_IDENTIFIER_BYTES {
        return out.to_string();
    }
    let cut = super::names::cut(out, super::names::MAX_IDENTIFIER_BYTES - 9);
    format!("{cut}~{}", super::names::short_hash(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_of_distinct_databases_are_distinct_and_short() {
        assert_eq!(file_safe("app"), "app");
        assert_eq!(file_safe("my-app_2.x"), "my-app_2.x");
        let names = ["café", "caf_", "cafè", ".x", "x", "a b", "a/b", "a_b", ""];
        let safe: std::collections::HashSet<String> = names.iter().map(|n| file_safe(n)).collect();
        assert_eq!(safe.len(), names.len(), "{safe:?}");
        for n in [&"d".repeat(200), &"日".repeat(21), "x".repeat(63).as_str()] {
            let f = file_safe(n);
            assert!(f.len() <= 63 && !f.is_empty(), "{f}");
            assert!(f
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-~".contains(&b)));
        }
    }

    #[test]
    fn a_newer_format_is_refused_and_said_so() {
        let newer = r#"{"format":2,"name":"app-20240101T000000Z","file":"app-20240101T000000Z.dump.zst",
            "kind":"database","database":"app","started":1,"finished":2,"dump_bytes":3,"size":4,
            "sha256":"00","compression":"zstd","level":3,"encryption":null,"recipients":[],"verified":null}"#;
        assert_eq!(Manifest::from_json(newer), None);
        assert!(unreadable(newer).contains("newer than this backup reads (1)"));
        assert!(Manifest::from_json(&newer.replace("\"format\":2", "\"format\":1")).is_some());
        assert_eq!(unreadable("{"), "not valid JSON");
        assert!(unreadable("{}").contains("not a dockhand manifest"));
    }

    #[test]
    fn manifests_without_counts_stay_valid_and_counts_round_trip() {
        let old = r#"{"format":1,"name":"app-20240101T000000Z","file":"app-20240101T000000Z.dump.zst",
            "kind":"database","database":"app","started":1,"finished":2,"dump_bytes":3,"size":4,
            "sha256":"00","compression":"zstd","level":3,"encryption":null,"recipients":[],"verified":null}"#;
        let mut m = Manifest::from_json(old).expect("an old manifest parses");
        assert_eq!((m.counts.clone(), m.drill.clone()), (None, None));
        m.counts = Some(Counts {
            tables: vec![("public".into(), "a \"b\"".into(), 25)],
            large_objects: 2,
        });
        m.drill = Some(Drill {
            at: 5,
            ok: false,
            seconds: 1.5,
            rows_missing: 25,
            problems: vec!["public.a: 25 rows in the backup, 0 restored".into()],
        });
        assert_eq!(Manifest::from_json(&m.to_json()), Some(m));
    }

    #[test]
    fn a_base_backups_wal_range_survives_its_manifest() {
        let name = format!("_base-{}", unique_stamp());
        let m = Manifest {
            name: name.clone(),
            file: format!("{name}.tar.zst"),
            kind: Content::Base,
            database: String::new(),
            server_version: "17.2".into(),
            pg_dump_version: "pg_dump (PostgreSQL) 17.2".into(),
            started: 1,
            finished: 2,
            dump_bytes: 3,
            size: 4,
            sha256: "00".into(),
            compression: Algorithm::Zstd,
            level: 3,
            encryption: None,
            recipients: Vec::new(),
            verified: None,
            counts: None,
            drill: None,
            wal: Some(WalRange {
                timeline: 2,
                start: "0/2000028".into(),
                end: "0/3000000".into(),
            }),
        };
        assert_eq!(Manifest::from_json(&m.to_json()), Some(m.clone()));
        assert!(is_own_data_file(&m.file, "_base-"));
        // A dump's manifest has no range.
        let dump = Manifest {
            kind: Content::Database,
            file: format!("{name}.dump.zst"),
            wal: None,
            ..m
        };
        assert_eq!(Manifest::from_json(&dump.to_json()), Some(dump));
    }

    /// The JSON of a manifest as the hand-written writer before serde wrote it (every
    /// field in use): it reads, and is written back as the same JSON value.
    #[test]
    fn the_stored_json_is_unchanged_by_serde() {
        let stored = r#"{"compression":"gzip","counts":{"large_objects":2,"tables":[
            {"rows":25,"schema":"public","table":"a \"b\""}]},"database":"app",
            "drill":{"at":5,"ok":false,"problems":["public.a: 25 rows in the backup, 0 restored"],
            "rows_missing":25,"seconds":1.5},"dump_bytes":3,"encryption":"age",
            "file":"_base-20240101T000000Z.tar.gz.age","finished":2,"format":1,"kind":"base",
            "level":6,"name":"_base-20240101T000000Z","pg_dump_version":"pg_dump (PostgreSQL) 17.2",
            "recipients":["age1x"],"server_version":"17.2","sha256":"00","size":4,"started":1,
            "timeline":2,"verified":7,"wal_end":"0/3000000","wal_start":"0/2000028"}"#;
        let m = Manifest::from_json(stored).expect("parses");
        assert_eq!(m.wal.as_ref().map(|w| w.timeline), Some(2));
        assert_eq!(m.counts.as_ref().map(|c| c.tables[0].2), Some(25));
        let value = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(value(&m.to_json()), value(stored));
        assert!(
            m.to_json().starts_with("{\n  \"format\": 1,"),
            "{}",
            m.to_json()
        );
        // A manifest without the range, counts or drill writes nulls, never the range.
        let plain = Manifest {
            wal: None,
            counts: None,
            drill: None,
            ..m
        };
        let v = value(&plain.to_json());
        assert!(v.get("timeline").is_none() && v["counts"].is_null() && v["drill"].is_null());
        // A half range is no range.
        let half = stored.replace(r#""wal_end":"0/3000000","#, "");
        assert_eq!(Manifest::from_json(&half).and_then(|m| m.wal), None);
    }

    #[test]
    fn own_data_files_match_the_stamp_exactly() {
        let now = unique_stamp();
        assert!(is_own_data_file(&format!("app-{now}.dump.zst"), "app-"));
        assert!(is_own_data_file(&format!("app-{now}.dump.gz.age"), "app-"));
        assert!(is_own_data_file("app-20240101T000000Z.dump.zst", "app-"));
        assert!(is_own_data_file(
            &format!("_globals-{now}.sql.zst"),
            "_globals-"
        ));
        // another database's backup whose name starts like this one's prefix
        assert!(!is_own_data_file(
            &format!("app-2026-{now}.dump.zst"),
            "app-"
        ));
        assert!(!is_own_data_file("app-2024.dump.zst", "app-"));
        assert!(!is_own_data_file(
            &format!("app-{now}.dump.zst.bak"),
            "app-"
        ));
    }
}
