//! Which tool wrote a migrations folder. Its own module because the answer decides
//! everything after it (how the folder is loaded, applied, recorded and linted), and
//! both the phase and `--migrate-status` ask it before they touch the database.

use std::path::Path;

use tracing::info;

use super::failure::{err, MigrateError};
use crate::config::{invalid, ConfigError};

/// The migration folder formats dockhand applies natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Refinery,
    /// drizzle-kit 0.x: `meta/_journal.json` and `TAG.sql` files.
    Drizzle,
    /// drizzle 1.0: `<YYYYMMDDHHMMSS>_<name>/migration.sql` folders.
    DrizzleV1,
    Prisma,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Refinery => "refinery",
            Format::Drizzle => "drizzle-kit 0.x",
            Format::DrizzleV1 => "drizzle 1.0",
            Format::Prisma => "Prisma",
        }
    }

    /// `--migrations-format`: `auto` (or nothing) detects; `drizzle` is either drizzle
    /// layout, told apart by the journal.
    pub fn parse(s: &str) -> Result<Option<Format>, ConfigError> {
        match s.trim() {
            "" | "auto" => Ok(None),
            "refinery" => Ok(Some(Format::Refinery)),
            "drizzle" => Ok(Some(Format::Drizzle)),
            "drizzle-v1" | "drizzle1" => Ok(Some(Format::DrizzleV1)),
            "prisma" => Ok(Some(Format::Prisma)),
            other => Err(invalid(format!(
                "--migrations-format {other:?}: use auto, refinery, drizzle or prisma"
            ))),
        }
    }
}

/// Says which format a folder is in, from what it holds; a folder that matches none,
/// or several, is an error naming what was found.
pub fn detect(dir: &Path) -> Result<Format, MigrateError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        err(format!(
            "--migrations {}: {}",
            dir.display(),
            crate::error::io_reason(&e)
        ))
    })?;
    let mut refinery_files = Vec::new();
    let mut stamped_folders = Vec::new();
    let mut other_sql = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Follows symlinks (a folder of linked migration folders), as loading does.
        let is_dir = e.path().is_dir();
        if is_dir && e.path().join("migration.sql").is_file() {
            stamped_folders.push(name);
        } else if !is_dir
            && (name.starts_with('V') || name.starts_with('U'))
            && name.as_bytes().get(1).is_some_and(u8::is_ascii_digit)
        {
            refinery_files.push(name);
        } else if !is_dir && name.ends_with(".sql") {
            other_sql.push(name);
        }
    }
    let journal = dir.join("meta/_journal.json").is_file();
    let prisma = dir.join("migration_lock.toml").is_file();
    let mut found: Vec<(Format, String)> = Vec::new();
    if prisma {
        found.push((Format::Prisma, "migration_lock.toml".into()));
    }
    if journal {
        found.push((Format::Drizzle, "meta/_journal.json".into()));
    }
    if !prisma && !stamped_folders.is_empty() {
        found.push((
            Format::DrizzleV1,
            format!(
                "{} <stamp>_<name>/migration.sql folder(s)",
                stamped_folders.len()
            ),
        ));
    }
    if !refinery_files.is_empty() {
        found.push((
            Format::Refinery,
            format!("{} V<n>__<name>.sql file(s)", refinery_files.len()),
        ));
    }
    match found.as_slice() {
        [(f, _)] => Ok(*f),
        [] => Err(err(format!(
            "--migrations {}: no migrations format recognised (found {}): expected refinery V1__name.sql files, a drizzle-kit folder (meta/_journal.json), drizzle 1.0 folders (YYYYMMDDHHMMSS_name/migration.sql) or a Prisma folder (migration_lock.toml)",
            dir.display(),
            if other_sql.is_empty() && stamped_folders.is_empty() {
                "nothing of these".to_string()
            } else {
                format!("{} other .sql file(s)", other_sql.len())
            }
        ))),
        several => Err(err(format!(
            "--migrations {}: the folder mixes formats: {}; keep one tool's migrations per folder (or pass --migrations-format)",
            dir.display(),
            several
                .iter()
                .map(|(f, what)| format!("{} ({what})", f.name()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The folder's format: as given (`drizzle` told apart by its journal), else detected.
pub fn resolve_format(dir: &Path, given: Option<Format>) -> Result<Format, MigrateError> {
    match given {
        Some(Format::Drizzle) | Some(Format::DrizzleV1) => {
            Ok(if dir.join("meta/_journal.json").is_file() {
                Format::Drizzle
            } else {
                Format::DrizzleV1
            })
        }
        Some(f) => Ok(f),
        None => {
            let f = detect(dir)?;
            info!("migrations: {} is a {} folder", dir.display(), f.name());
            Ok(f)
        }
    }
}
