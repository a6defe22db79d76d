//! The command line, driven by one table per binary (as ripgrep's `defs.rs`): each
//! [`Setting`] names its flag, its environment variable, its default and what it
//! means, and that one row is what the parser accepts, what `--help` prints, what the
//! README's reference table says (a test renders the table with [`markdown`] and finds
//! it in README.md) and the default the code gets. A setting is read from its flag,
//! else from its variable (or `NAME_FILE`, see [`crate::config::var`]), else from its
//! row's default.
//!
//! The code reads a setting by a key the compiler checks, not by a name: [`table!`]
//! declares a binary's table and an enum with one variant per row, in the same order,
//! so a variant is its row's index ([`Key`]) and a misspelt setting does not compile.
//! The tables live with what they configure: `cli::healthcheck`, `cli::entrypoint`,
//! and `backup::settings` (the sidecar's settings are loaded from it).

use std::collections::HashMap;
use std::ffi::OsString;
use std::marker::PhantomData;
use std::time::Duration;

use crate::config::{self, invalid, ConfigError};

/// A binary's settings: one variant per row of its table (declared by [`table!`]).
pub trait Key: Copy + std::fmt::Debug + 'static {
    /// The binary's table.
    fn table() -> &'static [Setting];
    /// This setting's row in [`Key::table`].
    fn index(self) -> usize;
    /// This setting's row.
    fn row(self) -> &'static Setting {
        &Self::table()[self.index()]
    }
}

/// Declares a binary's table, `static $table: &[Setting]`, and `enum $key` with one
/// variant per row in the same order, implementing [`Key`].
macro_rules! table {
    ($(#[$meta:meta])* $vis:vis enum $key:ident in $table:ident {
        $($(#[$vmeta:meta])* $var:ident = $row:expr),+ $(,)?
    }) => {
        /// One variant per row of the table, in its order: how the code names a
        /// setting (see [`crate::flags::Key`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $key { $($(#[$vmeta])* $var),+ }
        $(#[$meta])*
        $vis static $table: &[$crate::flags::Setting] = &[$($row),+];
        impl $crate::flags::Key for $key {
            fn table() -> &'static [$crate::flags::Setting] {
                $table
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}
pub(crate) use table;

/// What a row of a table takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// `--flag`, on when given; the variable holds a boolean.
    Switch,
    /// `--flag VALUE`; the last one given counts.
    Value(&'static str),
    /// `--flag VALUE`, repeatable; the variable holds a list.
    List(&'static str),
    /// Words that are not options (targets, the command); read by the binary.
    Words(&'static str),
    /// An environment variable only, read where it is used.
    Env,
    /// `-h, --help` and `-V, --version`.
    Help,
}

/// How a list variable is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// On commas and white space.
    Words,
    /// One item per line (HTTP headers hold commas and spaces).
    Lines,
}

/// One row of a binary's table.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The long flag without `--`; empty for a variable only.
    pub long: &'static str,
    pub short: Option<char>,
    pub arg: Arg,
    /// The environment variable; empty for a flag only.
    pub env: &'static str,
    /// A second variable read when the first is not set (`DATABASE_URL` after
    /// `DIRECT_URL`); empty: none.
    pub also: &'static str,
    /// The README's env column when it says more than the name (`HEALTHCHECK_HEADERS`
    /// (one per line)); empty: derived.
    pub env_shown: &'static str,
    /// The default, as the parser uses it (`5s`); empty: none.
    pub default: &'static str,
    /// The README's default column when it is not the default in backticks.
    pub default_shown: &'static str,
    /// What it means (Markdown; `--help` prints it without the backticks).
    pub doc: &'static str,
    /// Which part of the binary's documentation it belongs to.
    pub section: &'static str,
    /// The commands that take it (backup); empty: every one.
    pub commands: &'static [&'static str],
    pub split: Split,
}

impl Setting {
    const fn new(long: &'static str, arg: Arg, doc: &'static str) -> Setting {
        Setting {
            long,
            short: None,
            arg,
            env: "",
            also: "",
            env_shown: "",
            default: "",
            default_shown: "",
            doc,
            section: "",
            commands: &[],
            split: Split::Words,
        }
    }

    /// `--long`, a switch.
    pub const fn switch(long: &'static str, doc: &'static str) -> Setting {
        Setting::new(long, Arg::Switch, doc)
    }

    /// `--long VALUE`.
    pub const fn value(long: &'static str, value: &'static str, doc: &'static str) -> Setting {
        Setting::new(long, Arg::Value(value), doc)
    }

    /// `--long VALUE`, repeatable.
    pub const fn list(long: &'static str, value: &'static str, doc: &'static str) -> Setting {
        Setting::new(long, Arg::List(value), doc)
    }

    /// Positional words, documented.
    pub const fn words(name: &'static str, doc: &'static str) -> Setting {
        Setting::new("", Arg::Words(name), doc)
    }

    /// An environment variable only.
    pub const fn var(env: &'static str, doc: &'static str) -> Setting {
        Setting::new("", Arg::Env, doc).env(env)
    }

    /// `-h, --help` and `-V, --version`.
    pub const fn help() -> Setting {
        Setting::new("help", Arg::Help, "")
    }

    pub const fn short(mut self, c: char) -> Setting {
        self.short = Some(c);
        self
    }

    pub const fn env(mut self, env: &'static str) -> Setting {
        self.env = env;
        self
    }

    /// A second variable, read when the first is not set.
    pub const fn also(mut self, env: &'static str) -> Setting {
        self.also = env;
        self
    }

    pub const fn env_shown(mut self, shown: &'static str) -> Setting {
        self.env_shown = shown;
        self
    }

    pub const fn default(mut self, default: &'static str) -> Setting {
        self.default = default;
        self
    }

    pub const fn default_shown(mut self, shown: &'static str) -> Setting {
        self.default_shown = shown;
        self
    }

    pub const fn section(mut self, section: &'static str) -> Setting {
        self.section = section;
        self
    }

    pub const fn commands(mut self, commands: &'static [&'static str]) -> Setting {
        self.commands = commands;
        self
    }

    pub const fn lines(mut self) -> Setting {
        self.split = Split::Lines;
        self
    }

    /// `--long` (or the variable, for a variable only): how errors name it.
    pub fn name(&self) -> String {
        if self.long.is_empty() {
            self.env.to_string()
        } else {
            format!("--{}", self.long)
        }
    }

    /// The flag column: `-t, --timeout DURATION`.
    fn flag_text(&self) -> String {
        let short = self.short.map(|c| format!("-{c}, ")).unwrap_or_default();
        match self.arg {
            Arg::Switch => format!("{short}--{}", self.long),
            Arg::Value(v) | Arg::List(v) => format!("{short}--{} {v}", self.long),
            Arg::Words(w) => w.to_string(),
            Arg::Env => String::new(),
            Arg::Help => "-h, --help`, `-V, --version".into(),
        }
    }

    /// How an error about its value names it: `--timeout / HEALTHCHECK_TIMEOUT`, or
    /// the one of the two it has.
    pub fn label(&self) -> String {
        match (self.long, self.env) {
            ("", env) => env.to_string(),
            (_, "") => self.name(),
            (_, env) => format!("{} / {env}", self.name()),
        }
    }

    /// What it means, after the commands that take it when its doc does not name
    /// them first (`` `daemon`, `now`: ...``), as help and the README say it.
    fn doc_with_commands(&self) -> String {
        let said = self
            .commands
            .first()
            .is_some_and(|c| self.doc.starts_with(&format!("`{c}`")));
        if self.commands.is_empty() || said {
            return self.doc.to_string();
        }
        let names: Vec<String> = self.commands.iter().map(|c| format!("`{c}`")).collect();
        format!("{}: {}", names.join(", "), self.doc)
    }

    /// The env column, in Markdown.
    fn env_markdown(&self) -> String {
        if !self.env_shown.is_empty() {
            return self.env_shown.to_string();
        }
        match (self.env, self.arg) {
            ("", _) => String::new(),
            (e, Arg::Switch) => format!("`{e}=true`"),
            (e, _) => format!("`{e}`"),
        }
    }

    /// The default column, in Markdown.
    fn default_markdown(&self) -> String {
        if !self.default_shown.is_empty() {
            return self.default_shown.to_string();
        }
        match (self.default, self.arg) {
            ("", Arg::Switch) if !self.env.is_empty() => "off".into(),
            ("", _) => String::new(),
            (d, _) => format!("`{d}`"),
        }
    }
}

/// The README reference table of `section` (every row when empty), in Markdown.
pub fn markdown(table: &[Setting], section: &str) -> String {
    let mut out = String::from("| flag | env var | default | meaning |\n|---|---|---|---|\n");
    for s in table
        .iter()
        .filter(|s| section.is_empty() || s.section == section)
    {
        let flag = s.flag_text();
        let flag = if flag.is_empty() || flag.starts_with('`') {
            flag
        } else {
            format!("`{flag}`")
        };
        let mut row = String::from("|");
        for cell in [
            flag,
            s.env_markdown(),
            s.default_markdown(),
            s.doc_with_commands(),
        ] {
            if cell.is_empty() {
                row.push_str(" |");
            } else {
                row.push_str(&format!(" {cell} |"));
            }
        }
        out.push_str(&row);
        out.push('\n');
    }
    out
}

/// `--help` text: `intro`, then every row with a flag or a variable, each followed by
/// its variable and default, then `outro`.
pub fn help(intro: &str, table: &[Setting], outro: &str) -> String {
    const COLUMN: usize = 29;
    const WIDTH: usize = 88;
    let mut out = String::from(intro);
    let mut section = "";
    for s in table {
        if s.section != section && !s.section.is_empty() {
            section = s.section;
            out.push_str(&format!("\n{}:\n", capitalised(section)));
        }
        let head = match (s.arg, s.short) {
            (Arg::Env, _) => format!("  {}", plain(&s.env_markdown())),
            (Arg::Switch | Arg::Value(_) | Arg::List(_), None) => {
                format!("      {}", plain(&s.flag_text()))
            }
            _ => format!("  {}", plain(&s.flag_text())),
        };
        let mut notes = Vec::new();
        if !s.env.is_empty() && !matches!(s.arg, Arg::Env) {
            notes.push(plain(&s.env_markdown()));
        }
        let default = plain(&s.default_markdown());
        match default.as_str() {
            "" | "off" => {}
            "(required)" => notes.push("required".into()),
            d => notes.push(format!("default {d}")),
        }
        let mut doc = plain(&s.doc_with_commands());
        if matches!(s.arg, Arg::Help) {
            doc = "this help, the version".into();
        }
        if !notes.is_empty() {
            doc = format!("{doc} [{}]", notes.join(", "));
        }
        let mut line = head;
        if line.len() + 1 >= COLUMN {
            out.push_str(&line);
            out.push('\n');
            line = String::new();
        }
        for word in doc.split(' ') {
            if line.len() < COLUMN {
                line.push_str(&" ".repeat(COLUMN - line.len()));
            } else if line.len() + 1 + word.len() > WIDTH {
                out.push_str(line.trim_end());
                out.push('\n');
                line = " ".repeat(COLUMN);
            } else {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(outro);
    out
}

fn plain(markdown: &str) -> String {
    markdown.replace('`', "").replace("\\|", "|")
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// What a command line asks for: the binary's own work, or its help or version.
#[derive(Debug)]
pub enum Parsed<T> {
    Run(T),
    Help,
    Version,
}

/// Parses `args` against `K`'s table (see [`parse`]) and, unless `-h` or `-V` was
/// given, reads what the binary needs from the matches with `read`.
pub fn parse_with<K: Key, T>(
    args: impl IntoIterator<Item = OsString>,
    stop_at_word: bool,
    read: impl FnOnce(Matches<K>) -> Result<T, ConfigError>,
) -> Result<Parsed<T>, ConfigError> {
    outcome(parse(args, stop_at_word)?, read)
}

/// For the binaries' tests: `help` names every row's flag and variable of `table`,
/// and no line is wider than 88 columns.
#[cfg(test)]
pub(crate) fn assert_help_covers(help: &str, table: &[Setting]) {
    for s in table {
        if !s.long.is_empty() {
            assert!(
                help.contains(&format!("--{}", s.long)),
                "--{} missing:\n{help}",
                s.long
            );
        }
        if !s.env.is_empty() {
            assert!(help.contains(s.env), "{} missing:\n{help}", s.env);
        }
    }
    for line in help.lines() {
        assert!(line.chars().count() <= 88, "too wide: {line:?}");
    }
}

/// [`parse_with`], reading `vars` instead of the environment (unit tests of a
/// binary's command line, whatever the process environment holds).
#[cfg(all(test, feature = "probe"))]
pub(crate) fn parse_with_vars<K: Key, T>(
    args: impl IntoIterator<Item = OsString>,
    stop_at_word: bool,
    vars: &[(&str, &str)],
    read: impl FnOnce(Matches<K>) -> Result<T, ConfigError>,
) -> Result<Parsed<T>, ConfigError> {
    let mut m = parse(args, stop_at_word)?;
    m.vars = Matches::<K>::from_vars(vars).vars;
    outcome(m, read)
}

/// Help, the version, or what `read` makes of the matches.
fn outcome<K: Key, T>(
    m: Matches<K>,
    read: impl FnOnce(Matches<K>) -> Result<T, ConfigError>,
) -> Result<Parsed<T>, ConfigError> {
    if m.help {
        return Ok(Parsed::Help);
    }
    if m.version {
        return Ok(Parsed::Version);
    }
    read(m).map(Parsed::Run)
}

/// Where variables are read from: the process environment (with `NAME_FILE`), or a
/// map (unit tests).
#[derive(Debug)]
enum Vars {
    Process,
    Map(HashMap<String, String>),
}

/// What the command line said, read against `K`'s table.
#[derive(Debug)]
pub struct Matches<K: Key> {
    /// (row, value) for each flag given, in order; switches have no value.
    given: Vec<(usize, Option<String>)>,
    /// The words that are not options, in order (after `stop_at_word`, everything).
    pub words: Vec<OsString>,
    /// `-h`/`--help` was given.
    pub help: bool,
    /// `-V`/`--version` was given.
    pub version: bool,
    vars: Vars,
    key: PhantomData<K>,
}

/// Parses `args` (without the program name) against `K`'s table. With
/// `stop_at_word`, the first word that is not an option and everything after it are
/// [`Matches::words`] (the entrypoint's command); otherwise words and options may mix.
pub fn parse<K: Key>(
    args: impl IntoIterator<Item = OsString>,
    stop_at_word: bool,
) -> Result<Matches<K>, ConfigError> {
    use lexopt::prelude::*;
    let table = K::table();
    let mut m = Matches::<K>::empty(Vars::Process);
    let mut parser = lexopt::Parser::from_args(args);
    let bad = |e: lexopt::Error| invalid(e.to_string());
    while let Some(arg) = parser.next().map_err(bad)? {
        let row = match &arg {
            Short('h') | Long("help") => {
                m.help = true;
                return Ok(m);
            }
            Short('V') | Long("version") => {
                m.version = true;
                return Ok(m);
            }
            Long(name) => table.iter().position(|s| {
                s.long == *name && !matches!(s.arg, Arg::Env | Arg::Words(_) | Arg::Help)
            }),
            Short(c) => table.iter().position(|s| s.short == Some(*c)),
            Value(_) => None,
        };
        match (row, arg) {
            (Some(i), _) => {
                let value = match table[i].arg {
                    Arg::Switch => None,
                    _ => Some(value(&mut parser, &table[i].name())?),
                };
                m.given.push((i, value));
            }
            (None, Value(word)) => {
                m.words.push(word);
                if stop_at_word {
                    m.words.extend(parser.raw_args().map_err(bad)?);
                    break;
                }
            }
            (None, other) => return Err(invalid(other.unexpected().to_string())),
        }
    }
    Ok(m)
}

/// The current option's value, as UTF-8.
fn value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, ConfigError> {
    parser
        .value()
        .map_err(|_| invalid(format!("{flag} needs a value")))?
        .into_string()
        .map_err(|_| invalid(format!("{flag}: the value is not valid UTF-8")))
}

impl<K: Key> Matches<K> {
    fn empty(vars: Vars) -> Matches<K> {
        Matches {
            given: Vec::new(),
            words: Vec::new(),
            help: false,
            version: false,
            vars,
            key: PhantomData,
        }
    }

    /// No flags: the settings from the environment and the defaults alone (a
    /// supervisor reading one setting before the command line is parsed).
    pub fn environment() -> Matches<K> {
        Matches::empty(Vars::Process)
    }

    /// No flags, and these variables instead of the environment (unit tests); a
    /// `NAME_FILE` among them is read as [`config::var`] reads it.
    pub fn from_vars(vars: &[(&str, &str)]) -> Matches<K> {
        Matches::empty(Vars::Map(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ))
    }

    fn var(&self, name: &str) -> Result<Option<String>, ConfigError> {
        match &self.vars {
            Vars::Process => config::var(name),
            // as config::var reads the environment: empty is unset, `NAME_FILE` names
            // a file holding the value, and both at once is an error
            Vars::Map(m) => {
                let get = |n: &str| m.get(n).filter(|v| !v.is_empty());
                let file_var = format!("{name}_FILE");
                match (get(name), get(&file_var)) {
                    (Some(_), Some(_)) => Err(invalid(format!(
                        "both {name} and {file_var} are set: unset one of them"
                    ))),
                    (Some(v), None) => Ok(Some(v.clone())),
                    (None, Some(path)) => {
                        config::read_secret_file(&file_var, std::path::Path::new(path)).map(Some)
                    }
                    (None, None) => Ok(None),
                }
            }
        }
    }

    fn values(&self, k: K) -> impl Iterator<Item = &str> + '_ {
        self.given
            .iter()
            .filter(move |(i, _)| *i == k.index())
            .filter_map(|(_, v)| v.as_deref())
    }

    /// The words, as UTF-8; `error` when one is not.
    pub fn words_utf8(&self, error: &str) -> Result<Vec<String>, ConfigError> {
        self.words
            .iter()
            .map(|w| w.to_str().map(String::from).ok_or_else(|| invalid(error)))
            .collect()
    }

    /// The values given as flags, in order (no variable, no default).
    pub fn flags(&self, k: K) -> Vec<String> {
        self.values(k).map(String::from).collect()
    }

    /// The settings given as flags, in order.
    pub fn given(&self) -> impl Iterator<Item = &'static Setting> + '_ {
        let table = K::table();
        self.given.iter().map(move |(i, _)| &table[*i])
    }

    /// The value set by the user: the flag's (`true` for a switch given), else the
    /// variable's (else its second variable's), else `None`; never the default.
    pub fn explicit(&self, k: K) -> Result<Option<String>, ConfigError> {
        Ok(self.explicit_from(k)?.map(|(v, _)| v))
    }

    /// [`Matches::explicit`], with where the value came from (`--to`, `DIRECT_URL`,
    /// `DATABASE_URL`), for an error about it.
    pub fn explicit_from(&self, k: K) -> Result<Option<(String, String)>, ConfigError> {
        let row = k.row();
        if let Some((_, v)) = self.given.iter().rev().find(|(i, _)| *i == k.index()) {
            let v = v.clone().unwrap_or_else(|| "true".into());
            return Ok(Some((v, row.name())));
        }
        for env in [row.env, row.also] {
            if !env.is_empty() {
                if let Some(v) = self.var(env)? {
                    return Ok(Some((v, env.to_string())));
                }
            }
        }
        Ok(None)
    }

    /// Whether the user set it (flag or variable).
    pub fn is_set(&self, k: K) -> Result<bool, ConfigError> {
        Ok(self.explicit(k)?.is_some())
    }

    /// The flag's value, else the variable's, else the row's default (`None` when it
    /// has none).
    pub fn string(&self, k: K) -> Result<Option<String>, ConfigError> {
        Ok(match self.explicit(k)? {
            Some(v) => Some(v),
            None if !k.row().default.is_empty() => Some(k.row().default.to_string()),
            None => None,
        })
    }

    /// [`Matches::string`] through `parse`, whose error names the setting: a value
    /// set but malformed says which setting holds it.
    pub fn parsed<T, E: std::fmt::Display>(
        &self,
        k: K,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(k)? {
            None => Ok(None),
            Some(v) => parse(&v)
                .map(Some)
                .map_err(|e| invalid(format!("{}: {e}", k.row().label()))),
        }
    }

    /// On when the switch was given, else the variable (or the default) as a boolean.
    pub fn switch(&self, k: K) -> Result<bool, ConfigError> {
        let row = k.row();
        match self.string(k)? {
            Some(v) => config::parse_bool(
                if row.env.is_empty() {
                    row.long
                } else {
                    row.env
                },
                &v,
            ),
            None => Ok(false),
        }
    }

    /// A duration from the flag, the variable or the default.
    pub fn duration(&self, k: K) -> Result<Duration, ConfigError> {
        let row = k.row();
        let v = self
            .string(k)?
            .ok_or_else(|| invalid(format!("{} is not set", row.label())))?;
        crate::duration::parse(&v)
            .map_err(|e| invalid(format!("{}: {e}", row.label())).with_source(e))
    }

    /// A whole number from `min` to `max`, from the flag, the variable or the default.
    pub fn number<T>(&self, k: K, min: T, max: T) -> Result<Option<T>, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(v) = self.string(k)? else {
            return Ok(None);
        };
        v.trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .map(Some)
            .ok_or_else(|| {
                let row = k.row();
                let who = if row.env.is_empty() {
                    row.name()
                } else {
                    row.env.to_string()
                };
                invalid(format!(
                    "{who}={v:?}: use a whole number from {min} to {max}"
                ))
            })
    }

    /// The flags' values if any were given, else the variable split into a list.
    pub fn list(&self, k: K) -> Result<Vec<String>, ConfigError> {
        let given = self.flags(k);
        if !given.is_empty() {
            return Ok(given);
        }
        let row = k.row();
        let Some(v) = self.string(k)? else {
            return Ok(Vec::new());
        };
        Ok(match row.split {
            Split::Words => config::split_list(&v).map(String::from).collect(),
            Split::Lines => v
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    table! {
        enum T in TABLE {
            Timeout = Setting::value("timeout", "DURATION", "how long")
                .short('t')
                .env("DOCKHAND_TEST_CLI_TIMEOUT")
                .default("5s"),
            Verbose = Setting::switch("verbose", "say more").short('v'),
            Header = Setting::list("header", "'N: V'", "a header").short('H'),
            Targets = Setting::words("TARGET...", "targets"),
            Url = Setting::var("DOCKHAND_TEST_CLI_URL", "a URL").also("DOCKHAND_TEST_CLI_URL2"),
        }
    }

    fn p(a: &[&str], stop: bool) -> Result<Matches<T>, ConfigError> {
        parse::<T>(args(a), stop)
    }

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn flags_words_and_defaults() {
        let m = p(&["-t", "2s", "x", "-v", "-H", "a: b", "y"], false).unwrap();
        assert_eq!(m.duration(T::Timeout).unwrap(), Duration::from_secs(2));
        assert!(m.switch(T::Verbose).unwrap());
        assert_eq!(m.list(T::Header).unwrap(), ["a: b"]);
        assert_eq!(m.words, args(&["x", "y"]));
        let m = p(&["cmd", "-t", "1s"], true).unwrap();
        assert_eq!(m.words, args(&["cmd", "-t", "1s"]));
        // the row's default, and only the row's
        assert_eq!(m.duration(T::Timeout).unwrap(), Duration::from_secs(5));
        assert_eq!(m.string(T::Timeout).unwrap().as_deref(), Some("5s"));
        assert_eq!(m.explicit(T::Timeout).unwrap(), None);
        assert!(!m.switch(T::Verbose).unwrap());
    }

    #[test]
    fn variables_and_their_second_name() {
        let m = Matches::<T>::from_vars(&[
            ("DOCKHAND_TEST_CLI_TIMEOUT", "3s"),
            ("DOCKHAND_TEST_CLI_URL2", "b"),
        ]);
        assert_eq!(m.duration(T::Timeout).unwrap(), Duration::from_secs(3));
        assert_eq!(m.string(T::Url).unwrap().as_deref(), Some("b"));
        let m = Matches::<T>::from_vars(&[
            ("DOCKHAND_TEST_CLI_URL", "a"),
            ("DOCKHAND_TEST_CLI_URL2", "b"),
        ]);
        assert_eq!(m.string(T::Url).unwrap().as_deref(), Some("a"));
    }

    #[test]
    fn every_key_is_its_own_row() {
        for (k, long) in [
            (T::Timeout, "timeout"),
            (T::Verbose, "verbose"),
            (T::Header, "header"),
        ] {
            assert_eq!(k.row().long, long);
        }
        assert_eq!(T::Url.row().env, "DOCKHAND_TEST_CLI_URL");
        assert_eq!(T::Targets.row().arg, Arg::Words("TARGET..."));
    }

    #[test]
    fn bad_flags_say_which() {
        let e = p(&["--timeout"], false).unwrap_err();
        assert_eq!(e.message(), "--timeout needs a value");
        let e = p(&["--bogus"], false).unwrap_err();
        assert!(e.message().contains("invalid option '--bogus'"), "{e}");
        let e = p(&["-t", "soon"], false)
            .unwrap()
            .duration(T::Timeout)
            .unwrap_err();
        assert!(
            e.message()
                .starts_with("--timeout / DOCKHAND_TEST_CLI_TIMEOUT: "),
            "{e}"
        );
    }

    #[test]
    fn the_table_renders_as_markdown_and_help() {
        let md = markdown(TABLE, "");
        assert!(
            md.contains(
                "| `-t, --timeout DURATION` | `DOCKHAND_TEST_CLI_TIMEOUT` | `5s` | how long |"
            ),
            "{md}"
        );
        assert!(md.contains("| `-v, --verbose` | | | say more |"), "{md}");
        let h = help("intro\n", TABLE, "outro\n");
        assert!(
            h.contains(
                "  -t, --timeout DURATION     how long [DOCKHAND_TEST_CLI_TIMEOUT, default 5s]"
            ),
            "{h}"
        );
    }
}
