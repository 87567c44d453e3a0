//! The history of a test: every operation's invocation and completion, as JSON lines.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

/// How an operation ended (or that it started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Type {
    Invoke,
    /// It happened.
    Ok,
    /// It definitely did not happen.
    Fail,
    /// Unknown: a timeout, a lost connection, a "maybe committed" error.
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum F {
    /// Send values to keys (each key is one partition).
    Send,
    /// Read what is next for the keys the client is assigned or subscribed to.
    Poll,
    /// Read exactly these keys from now on (from the beginning when `seek_to_beginning`).
    Assign,
    /// Join a consumer group for these keys; the group decides who reads what.
    Subscribe,
    /// Commit the client's positions for its group.
    Commit,
}

/// One send inside a send operation: the offset is known once acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Send {
    pub key: u32,
    pub value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

/// One history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    pub index: u64,
    /// Nanoseconds since the test started.
    pub time_ns: u64,
    /// The client; a client whose operation ended `info` is replaced by a new process id.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Type,
    pub f: F,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sends: Vec<Send>,
    /// Poll results: key → (offset, value) in the order read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub polls: BTreeMap<u32, Vec<(i64, u64)>>,
    /// Poll results: key → (offset, leader epoch of its batch), where the client knew it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub epochs: BTreeMap<u32, Vec<(i64, i32)>>,
    /// Assign / subscribe: the keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<u32>,
    /// Commit: the group and key → committed offset (the next offset to read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub commits: BTreeMap<u32, i64>,
    /// Why it failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    pub fn new(process: u64, kind: Type, f: F) -> Op {
        Op {
            index: 0,
            time_ns: 0,
            process,
            kind,
            f,
            sends: Vec::new(),
            polls: BTreeMap::new(),
            epochs: BTreeMap::new(),
            keys: Vec::new(),
            group: None,
            commits: BTreeMap::new(),
            error: None,
        }
    }
}

/// Writes `ops` as JSON lines.
pub fn write(out: &mut impl Write, ops: &[Op]) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut *out, op)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads JSON lines; the error names the line.
pub fn read(input: impl BufRead) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(ops)
}
