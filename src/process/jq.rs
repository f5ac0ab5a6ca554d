//! `MetadataExtractionQuery`: a jq program (run by jaq) that turns one JSON record into an
//! object of partition keys, e.g. `{country: .location, year: .ts | strftime("%Y")}`.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data};
use jaq_json::Val;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled query. Not `Send` (jaq values are reference-counted): compile it on the thread
/// that runs it; compiling is cheap next to a batch.
pub struct Query {
    filter: Filter,
}

impl Query {
    pub fn compile(text: &str) -> Result<Query, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        // The prelude shadows what a query must not reach: the daemon's environment, and the
        // clock (a key from `now` would put a replayed record in another partition).
        let code = format!("{PRELUDE}{text}");
        let program = File {
            code: code.as_str(),
            path: (),
        };
        let modules = loader
            .load(&arena, program)
            .map_err(|errs| bounded(format!("cannot parse the query: {}", describe(&errs))))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| bounded(format!("cannot compile the query: {}", describe(&errs))))?;
        Ok(Query { filter })
    }

    /// Runs the query on one record. The first output must be an object whose values are
    /// strings, numbers or booleans; they become the record's partition keys, as text. An
    /// error message is at most [`MAX_MESSAGE_BYTES`], keys are bounded in number and size: a
    /// query cannot make an answer bigger than the limits of a partition key.
    pub fn keys(&self, record: &[u8]) -> Result<Vec<(String, String)>, String> {
        self.unbounded_keys(record).map_err(bounded)
    }

    fn unbounded_keys(&self, record: &[u8]) -> Result<Vec<(String, String)>, String> {
        // The parser recurses once per level: a deep record would overflow the thread's stack
        // and abort the daemon (and again at every replay). Measured first, without recursion.
        if nesting_depth(record) > MAX_DEPTH {
            return Err(format!(
                "the record nests arrays and objects deeper than {MAX_DEPTH} levels"
            ));
        }
        let input = jaq_json::read::parse_single(record)
            .map_err(|e| format!("the record is not JSON: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input));
        let first = match outputs.next() {
            None => return Err("the query produced no output".into()),
            // `halt` and other exceptions are errors of this record, never of the daemon.
            Some(Err(e)) => return Err(format!("the query failed: {e:?}")),
            Some(Ok(v)) => v,
        };
        let Val::Obj(map) = first else {
            return Err(format!("the query must produce an object, got {first}"));
        };
        if map.len() > MAX_KEYS {
            return Err(format!(
                "the query produced {} partition keys; at most {MAX_KEYS}",
                map.len()
            ));
        }
        let mut keys = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            let name = match k {
                Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(s).into_owned(),
                other => other.to_string(),
            };
            if name.len() > MAX_KEY_NAME_BYTES {
                return Err(format!(
                    "a partition key name is {} bytes; at most {MAX_KEY_NAME_BYTES}",
                    name.len()
                ));
            }
            let value = match v {
                Val::TStr(s) | Val::BStr(s) if s.len() > crate::process::MAX_VALUE_BYTES => {
                    return Err(format!(
                        "partition key {name:?} is {} bytes; at most {}",
                        s.len(),
                        crate::process::MAX_VALUE_BYTES
                    ));
                }
                Val::TStr(s) | Val::BStr(s) => String::from_utf8_lossy(s).into_owned(),
                Val::Num(_) | Val::Bool(_) => v.to_string(),
                Val::Null => return Err(format!("partition key {name:?} is null")),
                other => {
                    return Err(format!(
                        "partition key {name:?} must be a string, number or boolean, got {other}"
                    ));
                }
            };
            keys.push((name, value));
        }
        Ok(keys)
    }
}

/// Definitions every query is compiled after.
const PRELUDE: &str = "def env: error(\"env is not available to queries\"); \
def now: error(\"now is not available to queries: a replay after a crash would partition the record differently; use a time from the record, or !{timestamp:...} in the prefix (the arrival time)\"); ";
/// Most partition keys one query answer may hold.
pub const MAX_KEYS: usize = 64;
/// Longest partition key name, in bytes.
pub const MAX_KEY_NAME_BYTES: usize = 256;
/// Longest error message of a record's query, in bytes; longer ones are cut (the message of
/// `error(...)` or a printed value can be as large as the query makes it).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message`, cut to [`MAX_MESSAGE_BYTES`] at a character boundary.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    super::cut_message(&message, MAX_MESSAGE_BYTES)
}

/// Longest query accepted, in bytes: Firehose's limit on a processor parameter's value.
pub const MAX_QUERY_BYTES: usize = 5120;
/// Stack of the thread that checks a query: jaq's parser and compiler recurse once per level
/// of nesting, and a query arrives over the network. A query of `MAX_QUERY_BYTES` nested as
/// deep as it can be needs a small fraction of this.
const CHECK_STACK_BYTES: usize = 64 << 20;

/// Checks that `text` compiles, as a stream is defined. The daemon compiles again (and runs)
/// the query only in its sandboxed worker processes.
pub fn check(text: &str) -> Result<(), String> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query is {} bytes; at most {MAX_QUERY_BYTES}",
            text.len()
        ));
    }
    let owned = text.to_owned();
    let checker = std::thread::Builder::new()
        .name("jq-check".into())
        .stack_size(CHECK_STACK_BYTES)
        .spawn(move || Query::compile(&owned).map(drop))
        .map_err(|e| format!("cannot check the query: {e}"))?;
    checker
        .join()
        .unwrap_or_else(|_| Err("cannot compile the query".into()))
}

/// Deepest nesting of arrays and objects a record may have for the query.
pub const MAX_DEPTH: usize = 128;

/// The deepest nesting of `[` and `{` in JSON text, ignoring brackets inside strings.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn describe<E: std::fmt::Debug, F>(errs: &[(F, E)]) -> String {
    errs.iter()
        .map(|(_, e)| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_keys_with_jq_functions() {
        let q = Query::compile(
            r#"{country: .location, year: .ts | strftime("%Y"), n: .n, p: .premium}"#,
        )
        .unwrap();
        let keys = q
            .keys(br#"{"location":"KR","ts":1767225600,"n":7,"premium":false}"#)
            .unwrap();
        assert_eq!(
            keys,
            [
                ("country".to_string(), "KR".to_string()),
                ("year".into(), "2026".into()),
                ("n".into(), "7".into()),
                ("p".into(), "false".into())
            ]
        );
    }

    #[test]
    fn bad_queries_and_records_are_errors_not_exits() {
        assert!(Query::compile("{a: .x").is_err());
        assert!(Query::compile("nosuchfunction(1)").is_err());
        let q = Query::compile("{a: .x}").unwrap();
        assert!(q.keys(b"not json").unwrap_err().contains("not JSON"));
        assert!(q.keys(b"{}").unwrap_err().contains("null"));
        assert!(
            q.keys(br#"{"x":[1]}"#)
                .unwrap_err()
                .contains("string, number")
        );
        let halt = Query::compile("halt").unwrap();
        assert!(halt.keys(b"{}").is_err());
        let not_obj = Query::compile(".x").unwrap();
        assert!(
            not_obj
                .keys(br#"{"x":"y"}"#)
                .unwrap_err()
                .contains("object")
        );
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            q.keys(deep.as_bytes())
                .unwrap_err()
                .contains("deeper than 128")
        );
        let ok = format!(
            r#"{{"x":"{}","y":{}1{}}}"#,
            "[".repeat(200),
            "[".repeat(127),
            "]".repeat(127)
        );
        assert_eq!(nesting_depth(ok.as_bytes()), 128);
        assert_eq!(
            q.keys(ok.as_bytes()).unwrap(),
            [("a".to_string(), "[".repeat(200))]
        );
        let empty = Query::compile("empty").unwrap();
        assert!(empty.keys(b"{}").unwrap_err().contains("no output"));
    }

    #[test]
    fn checking_hostile_queries_neither_crashes_nor_hangs() {
        let n = MAX_QUERY_BYTES;
        for text in [
            "(".repeat(n),
            "[".repeat(n),
            "{a:".repeat(n / 3),
            format!("{}1{}", "(".repeat(n / 2 - 1), ")".repeat(n / 2 - 1)),
            format!("{}1{}", "[".repeat(n / 2 - 1), "]".repeat(n / 2 - 1)),
            format!("{}1", "1+".repeat(n / 2 - 1)),
            format!("{}1", "-".repeat(n - 1)),
            format!("{}.", ".a|".repeat(n / 4 - 1)),
            format!(
                "{}1{}",
                "if 1 then ".repeat(n / 15),
                " else 2 end".repeat(n / 15)
            )[..n]
                .to_string(),
            format!("{}f", "def f: 1; ".repeat(n / 10 - 1)),
            "def f: [f]; {k: f}".into(),
            "def f: f; f".into(),
        ] {
            assert!(text.len() <= n, "{}", text.len());
            let _ = check(&text);
        }
        assert!(
            check(&"1".repeat(n + 1))
                .unwrap_err()
                .contains("at most 5120")
        );
        assert!(check("{k: .a}").is_ok());
        assert!(check("{k: .a").is_err());
    }
}
