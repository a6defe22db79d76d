//! Giving back the resident pages of this binary's code once start-up is over. It
//! runs once, before the init loop starts, and is about memory, not about
//! supervising: a module of its own keeps the loop's file about the loop.

use nix::libc;

/// Drops this binary's clean code and constant pages from our resident set. Start-up
/// touched far more of them than supervising needs, and the kernel maps them 64 KiB at
/// a time; what the supervision loop uses faults back in from the page cache.
///
/// Only mappings of the executable that are read-only *and* hold no private copy of a
/// page (smaps `Anonymous: 0 kB`) are dropped: a RELRO segment, relocated by the loader
/// and then made read-only, would lose its relocations.
pub(super) fn shed_code_pages() {
    // The ranges are collected first and dropped last, after every String is freed,
    // so no parsing code runs (and faults back in) once they are gone.
    let mut ranges = [(0usize, 0usize); 8];
    let mut n = 0;
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return;
        };
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return;
        };
        let mut current: Option<(usize, usize)> = None;
        for line in smaps.lines() {
            let mut f = line.split_whitespace();
            let first = f.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
                // A mapping's header: "start-end perms offset dev inode path".
                let perms = f.next().unwrap_or("");
                let path = f.nth(3).unwrap_or("");
                current = match (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                    (Ok(a), Ok(b)) if !perms.contains('w') && std::path::Path::new(path) == exe => {
                        Some((a, b))
                    }
                    _ => None,
                };
            } else if first == "Anonymous:" {
                if let (Some(range), Some("0")) = (current.take(), f.next()) {
                    if n < ranges.len() {
                        ranges[n] = range;
                        n += 1;
                    }
                }
            }
        }
    }
    for &(a, b) in &ranges[..n] {
        // SAFETY: a read-only private mapping of our own executable with no private
        // page: dropping it only makes the next access read the file again.
        unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_DONTNEED) };
    }
}
