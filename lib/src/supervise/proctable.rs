//! The process table, read from /proc: which processes live, and whose children
//! they are. The init loop needs it only at shutdown, to find what is left besides
//! the app; parsing /proc is its own concern, so it lives apart from the loop.

/// Live processes in our PID namespace other than us (zombies excluded), from /proc.
pub(super) fn other_processes() -> Vec<i32> {
    let me = std::process::id() as i32;
    proc_table()
        .into_iter()
        .filter(|p| p.pid != me && !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// Live descendants of `root`, from /proc.
pub(super) fn descendants(root: i32) -> Vec<i32> {
    let table = proc_table();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in table.iter().filter(|p| p.ppid == parent) {
            if !p.zombie {
                out.push(p.pid);
            }
            frontier.push(p.pid);
        }
    }
    out
}

/// One process, from its `/proc/PID/stat`.
struct ProcEntry {
    pid: i32,
    ppid: i32,
    zombie: bool,
}

fn proc_table() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) S ppid ...": comm may contain spaces and parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next()?;
        let ppid = fields.next()?.parse().ok()?;
        Some(ProcEntry {
            pid,
            ppid,
            zombie: state == "Z" || state == "X",
        })
    })
    .collect()
}
