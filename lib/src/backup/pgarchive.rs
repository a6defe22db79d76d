//! The data offsets of a `pg_dump -Fc` archive that was written to a pipe.
//!
//! Why this exists: pg_dump records, in each table-of-contents entry, where that
//! entry's data block starts, but only when it can seek back over its own output. A
//! backup is streamed (pg_dump's stdout through the codec), so every offset says "not
//! set". `pg_restore -j` can still restore such an archive from a file, but each
//! worker then reads its way from the start of the data to the block it wants (block
//! header by block header; with `-Z0`, one per row), and the scheduler cannot put the
//! largest tables first because it does not know their sizes. Once the archive is a
//! file again ([`super::restore`]'s `--jobs`), [`fill_offsets`] walks it once and
//! writes each block's position into its entry, in place, exactly as pg_dump itself
//! rewrites the table of contents when it can seek: the same fields, the same widths,
//! nothing else touched. A wrong offset cannot pass unnoticed: pg_restore checks the
//! block it seeks to against the entry's ID.
//!
//! The format is read as pg_dump's `ReadHead`/`ReadToc` and the custom format's block
//! reader do (src/bin/pg_dump/pg_backup_archiver.c, pg_backup_custom.c), for archive
//! versions 1.12 to 1.16 (pg_dump 9.6 to 17 and later). Anything else, or anything
//! that does not parse, leaves the file as it was: pg_restore then scans, as before.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Why an archive's offsets were not filled in.
#[derive(Debug)]
pub enum OffsetError {
    /// Not a custom-format archive of a version this reader knows.
    Unsupported(String),
    /// It ended or held a value no pg_dump writes.
    Malformed(String),
    Io(std::io::Error),
}

impl std::fmt::Display for OffsetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffsetError::Unsupported(s) => write!(f, "not an archive this reader knows: {s}"),
            OffsetError::Malformed(s) => write!(f, "the archive does not parse: {s}"),
            OffsetError::Io(e) => write!(f, "{}", crate::error::io_reason(e)),
        }
    }
}

impl std::error::Error for OffsetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OffsetError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for OffsetError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            OffsetError::Malformed("it ends early".into())
        } else {
            OffsetError::Io(e)
        }
    }
}

const MAGIC: &[u8; 5] = b"PGDMP";
/// `archCustom` in pg_backup.h.
const FORMAT_CUSTOM: u8 = 1;
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// The offset flags (`K_OFFSET_*`).
pub const OFFSET_NOT_SET: u8 = 1;
pub const OFFSET_SET: u8 = 2;
pub const OFFSET_NO_DATA: u8 = 3;

/// One table-of-contents entry's data offset field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub dump_id: i64,
    /// Where the flag byte of its offset field is in the file.
    field: u64,
    /// `OFFSET_NOT_SET`, `OFFSET_SET` or `OFFSET_NO_DATA`.
    pub flag: u8,
    pub offset: u64,
}

/// What [`read`] found: the entries' offset fields and where each data block starts.
#[derive(Debug, Default)]
pub struct Layout {
    off_size: usize,
    pub entries: Vec<Entry>,
    /// Data blocks by dump ID: the position of the block's type byte.
    pub blocks: HashMap<i64, u64>,
}

/// What [`fill_offsets`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// Entries whose offset was written.
    pub set: usize,
    /// Data blocks in the archive.
    pub blocks: usize,
}

/// Writes every data block's position into its table-of-contents entry, where the
/// archive says "not set". Nothing is written unless the whole archive parsed.
pub fn fill_offsets(path: &Path) -> Result<Filled, OffsetError> {
    let layout = read(path)?;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut set = 0;
    for e in &layout.entries {
        let Some(&at) = layout.blocks.get(&e.dump_id) else {
            continue;
        };
        // an offset the field cannot hold (a narrower field than pg_dump's 8 bytes)
        // stays unset: pg_restore then reads its way there
        if e.flag != OFFSET_NOT_SET || (layout.off_size < 8 && at >> (8 * layout.off_size) != 0) {
            continue;
        }
        let mut field = vec![OFFSET_SET];
        field.extend_from_slice(&at.to_le_bytes()[..layout.off_size.min(8)]);
        // an offset field wider than 8 bytes: the rest stays zero, as pg_dump writes it
        file.write_all_at(&field, e.field)?;
        set += 1;
    }
    Ok(Filled {
        set,
        blocks: layout.blocks.len(),
    })
}

/// Reads an archive's header, table of contents and the positions of its data blocks.
pub fn read(path: &Path) -> Result<Layout, OffsetError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 20, file),
        pos: 0,
        len,
        int_size: 4,
    };
    let (minor, off_size) = read_head(&mut r)?;
    let count = r.int()?;
    if count < 0 {
        return Err(OffsetError::Malformed(format!("{count} entries")));
    }
    let mut layout = Layout {
        off_size,
        ..Layout::default()
    };
    for _ in 0..count {
        layout.entries.push(read_entry(&mut r, minor, off_size)?);
    }
    read_blocks(&mut r, &mut layout)?;
    Ok(layout)
}

/// The header, as pg_dump's `ReadHead` reads it: the archive's minor version and its
/// offset size; the reader is left at the table of contents.
fn read_head(r: &mut Reader) -> Result<(u8, usize), OffsetError> {
    let mut magic = [0u8; 5];
    r.bytes(&mut magic)?;
    if &magic != MAGIC {
        return Err(OffsetError::Unsupported("no PGDMP header".into()));
    }
    let (major, minor, _rev) = (r.byte()?, r.byte()?, r.byte()?);
    if major != 1 || !(12..=16).contains(&minor) {
        return Err(OffsetError::Unsupported(format!(
            "archive version {major}.{minor}"
        )));
    }
    r.int_size = usize::from(r.byte()?);
    let off_size = usize::from(r.byte()?);
    if !(1..=8).contains(&r.int_size) || !(1..=16).contains(&off_size) {
        return Err(OffsetError::Malformed(format!(
            "integer size {} and offset size {off_size}",
            r.int_size
        )));
    }
    let format = r.byte()?;
    if format != FORMAT_CUSTOM {
        return Err(OffsetError::Unsupported(format!("archive format {format}")));
    }
    if minor >= 15 {
        r.byte()?; // compression algorithm
    } else {
        r.int()?; // compression level
    }
    for _ in 0..7 {
        r.int()?; // the creation time's fields
    }
    for _ in 0..3 {
        r.string()?; // database, server version, pg_dump version
    }
    Ok((minor, off_size))
}

/// One table-of-contents entry, as `ReadToc` reads it, with where its offset field is.
fn read_entry(r: &mut Reader, minor: u8, off_size: usize) -> Result<Entry, OffsetError> {
    let dump_id = r.int()?;
    if dump_id <= 0 {
        return Err(OffsetError::Malformed(format!("entry ID {dump_id}")));
    }
    r.int()?; // had a data dumper
    for _ in 0..4 {
        r.string()?; // table OID, OID, tag, kind
    }
    r.int()?; // section
    for _ in 0..5 {
        r.string()?; // definition, drop, copy statements, schema, tablespace
    }
    if minor >= 14 {
        r.string()?; // table access method
    }
    if minor >= 16 {
        r.int()?; // relkind
    }
    r.string()?; // owner
    r.string()?; // "false" (WITH OIDS)
    while r.string()?.is_some() {} // dependencies, ended by a null string
    let field = r.pos;
    let flag = r.byte()?;
    let mut offset = 0u64;
    for i in 0..off_size {
        let b = u64::from(r.byte()?);
        if i < 8 {
            offset |= b << (8 * i);
        }
    }
    if !(OFFSET_NOT_SET..=OFFSET_NO_DATA).contains(&flag) {
        return Err(OffsetError::Malformed(format!(
            "offset flag {flag} in entry {dump_id}"
        )));
    }
    Ok(Entry {
        dump_id,
        field,
        flag,
        offset,
    })
}

/// The data blocks, each a type byte and its entry's ID, then chunks of a length and
/// that many bytes up to a zero length (large objects: an OID before each object's
/// chunks, up to a zero OID): where each entry's block starts.
fn read_blocks(r: &mut Reader, layout: &mut Layout) -> Result<(), OffsetError> {
    loop {
        let at = r.pos;
        let Some(kind) = r.byte_or_eof()? else {
            return Ok(());
        };
        let dump_id = r.int()?;
        match kind {
            BLK_DATA => r.skip_chunks()?,
            BLK_BLOBS => {
                while r.int()? != 0 {
                    r.skip_chunks()?;
                }
            }
            other => {
                return Err(OffsetError::Malformed(format!(
                    "block type {other} at byte {at}"
                )))
            }
        }
        if layout.blocks.insert(dump_id, at).is_some() {
            return Err(OffsetError::Malformed(format!(
                "two data blocks for entry {dump_id}"
            )));
        }
    }
}

/// pg_dump's primitive reads, counting the position.
struct Reader {
    inner: BufReader<File>,
    pos: u64,
    /// The file's length: a length pointing past it is a malformed archive.
    len: u64,
    int_size: usize,
}

impl Reader {
    fn bytes(&mut self, buf: &mut [u8]) -> Result<(), OffsetError> {
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, OffsetError> {
        let mut b = [0u8; 1];
        self.bytes(&mut b)?;
        Ok(b[0])
    }

    fn byte_or_eof(&mut self) -> Result<Option<u8>, OffsetError> {
        let mut b = [0u8; 1];
        loop {
            return match self.inner.read(&mut b) {
                Ok(0) => Ok(None),
                Ok(_) => {
                    self.pos += 1;
                    Ok(Some(b[0]))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e.into()),
            };
        }
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, least significant first.
    fn int(&mut self) -> Result<i64, OffsetError> {
        let negative = self.byte()? != 0;
        let mut v: i64 = 0;
        for i in 0..self.int_size {
            let b = i64::from(self.byte()?);
            if i < 7 {
                v |= b << (8 * i);
            } else if b != 0 {
                return Err(OffsetError::Malformed("an integer past 56 bits".into()));
            }
        }
        Ok(if negative { -v } else { v })
    }

    /// `ReadStr`: a length, -1 for a null string.
    fn string(&mut self) -> Result<Option<()>, OffsetError> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        self.skip(len)?;
        Ok(Some(()))
    }

    fn skip(&mut self, len: i64) -> Result<(), OffsetError> {
        if len < 0 {
            return Err(OffsetError::Malformed(format!("length {len}")));
        }
        let end = self.pos.saturating_add(len as u64);
        if end > self.len {
            return Err(OffsetError::Malformed(format!(
                "a length of {len} at byte {} runs past the end",
                self.pos
            )));
        }
        self.inner.seek_relative(len)?;
        self.pos = end;
        Ok(())
    }

    fn skip_chunks(&mut self) -> Result<(), OffsetError> {
        loop {
            let len = self.int()?;
            if len == 0 {
                return Ok(());
            }
            self.skip(len)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive as pg_dump 17 writes it to a pipe: three entries, two with data
    /// (one of them large objects), the offsets not set.
    fn archive(minor: u8) -> Vec<u8> {
        archive_with(minor, 8)
    }

    fn archive_with(minor: u8, off_size: u8) -> Vec<u8> {
        let mut a = Vec::new();
        let int = |a: &mut Vec<u8>, v: i64| {
            a.push(u8::from(v < 0));
            a.extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        };
        let string = |a: &mut Vec<u8>, s: Option<&str>| match s {
            Some(s) => {
                a.push(0);
                a.extend_from_slice(&(s.len() as u32).to_le_bytes());
                a.extend_from_slice(s.as_bytes());
            }
            None => {
                a.push(1);
                a.extend_from_slice(&1u32.to_le_bytes());
            }
        };
        a.extend_from_slice(b"PGDMP");
        a.extend_from_slice(&[1, minor, 0, 4, off_size, FORMAT_CUSTOM]);
        if minor >= 15 {
            a.push(0);
        } else {
            int(&mut a, 0);
        }
        for v in [1, 2, 3, 4, 5, 126, 0] {
            int(&mut a, v);
        }
        for s in ["app", "17.2", "17.2"] {
            string(&mut a, Some(s));
        }
        int(&mut a, 3);
        for (id, data) in [(1, false), (2, true), (3, true)] {
            int(&mut a, id);
            int(&mut a, i64::from(data));
            for s in ["0", "16384", "t", "TABLE DATA"] {
                string(&mut a, Some(s));
            }
            int(&mut a, 2);
            for s in ["", "", "COPY t FROM stdin;\n", "public", ""] {
                string(&mut a, Some(s));
            }
            if minor >= 14 {
                string(&mut a, Some("heap"));
            }
            if minor >= 16 {
                int(&mut a, i64::from(b'r'));
            }
            string(&mut a, Some("app"));
            string(&mut a, Some("false"));
            string(&mut a, Some("1"));
            string(&mut a, None);
            a.push(if data { OFFSET_NOT_SET } else { OFFSET_NO_DATA });
            a.extend(std::iter::repeat_n(0, usize::from(off_size)));
        }
        a.push(BLK_DATA);
        int(&mut a, 2);
        for row in ["1\tone\n", "2\ttwo\n"] {
            int(&mut a, row.len() as i64);
            a.extend_from_slice(row.as_bytes());
        }
        int(&mut a, 0);
        a.push(BLK_BLOBS);
        int(&mut a, 3);
        int(&mut a, 16400);
        int(&mut a, 3);
        a.extend_from_slice(b"abc");
        int(&mut a, 0);
        int(&mut a, 0);
        a
    }

    fn written(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.dump");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn the_offsets_of_a_piped_archive_are_filled_in_place() {
        for minor in [12, 14, 15, 16] {
            let bytes = archive(minor);
            let (_d, path) = written(&bytes);
            let before = read(&path).unwrap();
            assert_eq!(before.blocks.len(), 2);
            let filled = fill_offsets(&path).unwrap();
            assert_eq!(filled, Filled { set: 2, blocks: 2 });
            let after = std::fs::read(&path).unwrap();
            assert_eq!(after.len(), bytes.len(), "nothing added");
            let layout = read(&path).unwrap();
            for e in &layout.entries {
                match e.dump_id {
                    1 => assert_eq!((e.flag, e.offset), (OFFSET_NO_DATA, 0)),
                    id => {
                        let at = layout.blocks[&id];
                        assert_eq!((e.flag, e.offset), (OFFSET_SET, at));
                        let kind = after[at as usize];
                        assert_eq!(kind, if id == 2 { BLK_DATA } else { BLK_BLOBS });
                    }
                }
            }
            // only the offset fields changed
            let differ: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i] != after[i]).collect();
            for i in differ {
                assert!(
                    layout
                        .entries
                        .iter()
                        .any(|e| (e.field..e.field + 9).contains(&(i as u64))),
                    "byte {i} outside an offset field changed"
                );
            }
            // a second pass changes nothing
            assert_eq!(fill_offsets(&path).unwrap().set, 0);
        }
    }

    #[test]
    fn an_offset_too_wide_for_its_field_stays_unset() {
        // one-byte offset fields: every block starts past byte 255
        let bytes = archive_with(16, 1);
        let (_d, path) = written(&bytes);
        assert_eq!(fill_offsets(&path).unwrap(), Filled { set: 0, blocks: 2 });
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // two-byte fields hold them
        let bytes = archive_with(16, 2);
        let (_d, path) = written(&bytes);
        assert_eq!(fill_offsets(&path).unwrap().set, 2);
    }

    #[test]
    fn an_archive_that_does_not_parse_is_left_as_it_was() {
        let bytes = archive(16);
        let cases: Vec<Vec<u8>> = vec![
            bytes[..bytes.len() - 3].to_vec(),  // cut in the last block
            bytes[..bytes.len() - 20].to_vec(), // cut inside a large object's data
            bytes[..40].to_vec(),               // cut in the header
            [b"PGDMX".as_slice(), &bytes[5..]].concat(), // not an archive
            [&bytes[..6], &[11u8], &bytes[7..]].concat(), // version 1.11
            [&bytes[..10], &[3u8], &bytes[11..]].concat(), // tar format
            [bytes.as_slice(), &[9u8, 0, 1, 0, 0, 0]].concat(), // unknown block type
            Vec::new(),
        ];
        for case in cases {
            let (_d, path) = written(&case);
            assert!(fill_offsets(&path).is_err());
            assert_eq!(std::fs::read(&path).unwrap(), case);
        }
    }
}
