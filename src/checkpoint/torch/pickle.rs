//! A bounded pickle reader: it runs the pickle machine without executing anything, building a
//! graph of plain values and inert "call" records (`torch._utils._rebuild_tensor_v2(...)`,
//! `argparse.Namespace()`), which [`super::tensor`] and [`super::contents`] interpret.
//!
//! Why not a crate: candle-core's `pickle` module (measured on the fixtures of
//! `tests/fixtures/pytorch/`, see their README) reads the zip format only, stops at protocol 4
//! opcodes, panics on short argument tuples, aborts with a stack overflow on deeply nested input
//! and allocates the length a string claims before reading it; `serde-pickle` rejects the
//! persistent ids every PyTorch file uses. PyTorch files are untrusted input, so this reader is
//! built for that:
//!
//! - every object lives in one arena ([`Pickle::nodes`]) and refers to others by index, so the
//!   memo shares objects instead of cloning them, and dropping the graph is a flat loop however
//!   deep the nesting (no recursion anywhere);
//! - the arena, the stack and the memo are capped ([`MAX_UNITS`]), and no length read from the
//!   file is allocated before the bytes are there (lengths are read through `take`);
//! - unknown classes are never an error: they become [`Node::Object`] records, so objects such as
//!   `args` (an `argparse.Namespace`) are skipped or read as plain data, never run.

use std::collections::HashMap;
use std::io::{BufRead, Read};

use super::error::{bail, err, Result};

/// Index of a node in [`Pickle::nodes`].
pub type Id = u32;

/// Cap on nodes + container entries + memo entries + stack depth of one pickle. A real
/// checkpoint of the largest registered model (L/16 with optimizer moments and EMA weights)
/// needs about 10⁵; the cap keeps a hostile pickle under ≈ 300 MiB of memory.
pub const MAX_UNITS: usize = 1 << 22;

/// Longest text-protocol line (a `GLOBAL` module name, an `INT` literal).
const MAX_LINE: u64 = 1 << 16;

/// One value of the unpickled graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, little-endian two's complement (the legacy format's magic
    /// number is one).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Python dicts and `collections.OrderedDict`s, in insertion order.
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    /// A class or function reference (`GLOBAL module name`), never resolved.
    Global {
        module: String,
        name: String,
    },
    /// What calling `callable(*args)` would have made (REDUCE, NEWOBJ, INST, OBJ), with the state
    /// BUILD gave it and the items SETITEMS / APPENDS added to it.
    Object {
        callable: Id,
        args: Id,
        state: Option<Id>,
        items: Vec<(Id, Id)>,
        list: Vec<Id>,
    },
    /// A persistent id (PyTorch's storage references).
    PersistentId(Id),
}

/// An unpickled graph: the nodes and the root object.
#[derive(Debug)]
pub struct Pickle {
    pub nodes: Vec<Node>,
    pub root: Id,
}

impl Pickle {
    pub fn node(&self, id: Id) -> &Node {
        // Every id handed out indexes `nodes` (ids are only created by `Machine::add`).
        &self.nodes[id as usize]
    }

    pub fn str(&self, id: Id) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, id: Id) -> Option<i64> {
        match self.node(id) {
            Node::Int(v) => Some(*v),
            Node::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub fn tuple(&self, id: Id) -> Option<&[Id]> {
        match self.node(id) {
            Node::Tuple(v) | Node::List(v) => Some(v),
            _ => None,
        }
    }

    pub fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.node(id) {
            Node::Dict(v) => Some(v),
            _ => None,
        }
    }

    /// `module.name` of a global, or of the class an object was made from.
    pub fn class_name(&self, id: Id) -> Option<String> {
        match self.node(id) {
            Node::Global { module, name } => Some(format!("{module}.{name}")),
            Node::Object { callable, .. } => match self.node(*callable) {
                Node::Global { module, name } => Some(format!("{module}.{name}")),
                _ => None,
            },
            _ => None,
        }
    }

    /// The value of `key` in a dict node.
    pub fn get(&self, dict: Id, key: &str) -> Option<Id> {
        self.dict(dict)?
            .iter()
            .find(|(k, _)| self.str(*k) == Some(key))
            .map(|(_, v)| *v)
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Mark,
    Obj(Id),
}

/// The pickle machine's state.
struct Machine {
    nodes: Vec<Node>,
    stack: Vec<Slot>,
    memo: HashMap<u64, Id>,
    units: usize,
    pos: u64,
}

/// Reads one pickle (up to and including its STOP opcode) from `r`.
pub fn read(r: &mut impl BufRead) -> Result<Pickle> {
    let mut m = Machine {
        nodes: Vec::new(),
        stack: Vec::new(),
        memo: HashMap::new(),
        units: 0,
        pos: 0,
    };
    loop {
        let at = m.pos;
        let op = m.u8(r)?;
        if m.step(op, r)
            .map_err(|e| e.context(format!("pickle opcode 0x{op:02x} at byte {at}")))?
        {
            break;
        }
    }
    let root = match m.stack.pop() {
        Some(Slot::Obj(id)) => id,
        _ => bail!("the pickle ends without a value"),
    };
    Ok(Pickle {
        nodes: m.nodes,
        root,
    })
}

impl Machine {
    fn charge(&mut self, n: usize) -> Result<()> {
        self.units += n;
        if self.units > MAX_UNITS {
            bail!("the pickle holds more than {MAX_UNITS} objects: not a model checkpoint");
        }
        Ok(())
    }

    fn add(&mut self, node: Node) -> Result<Id> {
        self.charge(1)?;
        let id = self.nodes.len() as Id;
        self.nodes.push(node);
        Ok(id)
    }

    fn push(&mut self, node: Node) -> Result<()> {
        let id = self.add(node)?;
        self.push_id(id)
    }

    fn push_id(&mut self, id: Id) -> Result<()> {
        self.charge(1)?;
        self.stack.push(Slot::Obj(id));
        Ok(())
    }

    fn pop(&mut self) -> Result<Id> {
        match self.stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            Some(Slot::Mark) => bail!("a mark where a value was expected"),
            None => bail!("stack underflow"),
        }
    }

    fn top(&self) -> Result<Id> {
        match self.stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            _ => bail!("no value on the stack"),
        }
    }

    /// Everything above the topmost mark (the mark is removed).
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let Some(mark) = self.stack.iter().rposition(|s| matches!(s, Slot::Mark)) else {
            bail!("no mark on the stack");
        };
        let items = self
            .stack
            .split_off(mark + 1)
            .into_iter()
            .filter_map(|s| match s {
                Slot::Obj(id) => Some(id),
                // None: the topmost mark is below these.
                Slot::Mark => None,
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }

    fn u8(&mut self, r: &mut impl BufRead) -> Result<u8> {
        let mut b = [0u8; 1];
        self.exact(r, &mut b)?;
        Ok(b[0])
    }

    fn exact(&mut self, r: &mut impl BufRead, buf: &mut [u8]) -> Result<()> {
        r.read_exact(buf)
            .map_err(|_| err!("the pickle is truncated"))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn le(&mut self, r: &mut impl BufRead, n: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(r, &mut b[..n])?;
        Ok(u64::from_le_bytes(b))
    }

    /// `n` bytes, read before anything is allocated for them (a forged length finds the end of
    /// the data, not the allocator's limit).
    fn bytes(&mut self, r: &mut impl BufRead, n: u64) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        r.by_ref().take(n).read_to_end(&mut v)?;
        if (v.len() as u64) < n {
            bail!("the pickle is truncated (a {n}-byte string runs past its end)");
        }
        self.pos += n;
        Ok(v)
    }

    fn line(&mut self, r: &mut impl BufRead) -> Result<String> {
        let mut v = Vec::new();
        r.by_ref().take(MAX_LINE).read_until(b'\n', &mut v)?;
        self.pos += v.len() as u64;
        if v.pop() != Some(b'\n') {
            bail!("a text line is unterminated or longer than {MAX_LINE} bytes");
        }
        if v.last() == Some(&b'\r') {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn text(&mut self, bytes: Vec<u8>) -> Result<()> {
        let s = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        self.push(Node::Str(s))
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        self.charge(1)?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        match self.memo.get(&key) {
            Some(&id) => self.push_id(id),
            None => bail!("memo entry {key} is read before it is written"),
        }
    }

    /// The result of calling `callable(*args)`: an empty dict for `OrderedDict()` / `dict()`
    /// (so that SETITEMS fills it), otherwise an inert call record.
    fn call(&mut self, callable: Id, args: Id) -> Result<()> {
        let dict_like = matches!(
            &self.nodes[callable as usize],
            Node::Global { module, name }
                if (module == "collections" && name == "OrderedDict")
                    || (matches!(module.as_str(), "builtins" | "__builtin__") && name == "dict")
        );
        let no_args = matches!(&self.nodes[args as usize], Node::Tuple(a) if a.is_empty());
        if dict_like && no_args {
            return self.push(Node::Dict(Vec::new()));
        }
        self.push(Node::Object {
            callable,
            args,
            state: None,
            items: Vec::new(),
            list: Vec::new(),
        })
    }

    fn set_items(&mut self, pairs: Vec<(Id, Id)>) -> Result<()> {
        let target = self.top()?;
        self.charge(pairs.len())?;
        match &mut self.nodes[target as usize] {
            Node::Dict(d) => d.extend(pairs),
            Node::Object { items, .. } => items.extend(pairs),
            other => bail!(
                "SETITEM needs a dict, found a value of type {}",
                kind(other)
            ),
        }
        Ok(())
    }

    fn append(&mut self, values: Vec<Id>) -> Result<()> {
        let target = self.top()?;
        self.charge(values.len())?;
        match &mut self.nodes[target as usize] {
            Node::List(l) | Node::Set(l) => l.extend(values),
            Node::Object { list, .. } => list.extend(values),
            other => bail!("APPEND needs a list, found a value of type {}", kind(other)),
        }
        Ok(())
    }

    fn pairs(items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if !items.len().is_multiple_of(2) {
            bail!("an odd number of items for a dict");
        }
        Ok(items.chunks_exact(2).map(|c| (c[0], c[1])).collect())
    }

    fn int_from_le(bytes: Vec<u8>) -> Node {
        if bytes.len() <= 8 {
            let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
            let mut b = [if negative { 0xff } else { 0 }; 8];
            b[..bytes.len()].copy_from_slice(&bytes);
            Node::Int(i64::from_le_bytes(b))
        } else {
            Node::BigInt(bytes)
        }
    }

    /// One opcode; `true` at STOP.
    fn step(&mut self, op: u8, r: &mut impl BufRead) -> Result<bool> {
        match op {
            b'.' => return Ok(true), // STOP
            0x80 => {
                // PROTO
                let v = self.u8(r)?;
                if v > 5 {
                    bail!("pickle protocol {v} is newer than any Python writes (≤ 5)");
                }
            }
            0x95 => {
                // FRAME: a length hint only.
                self.le(r, 8)?;
            }
            b'(' => {
                self.charge(1)?;
                self.stack.push(Slot::Mark)
            }
            b'0' => {
                // POP
                if self.stack.pop().is_none() {
                    bail!("stack underflow");
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let id = self.top()?;
                self.push_id(id)?
            }
            // Constants and numbers.
            b'N' => self.push(Node::None)?,
            0x88 => self.push(Node::Bool(true))?,
            0x89 => self.push(Node::Bool(false))?,
            b'J' => {
                let v = self.le(r, 4)? as u32 as i32;
                self.push(Node::Int(v as i64))?
            }
            b'K' => {
                let v = self.le(r, 1)?;
                self.push(Node::Int(v as i64))?
            }
            b'M' => {
                let v = self.le(r, 2)?;
                self.push(Node::Int(v as i64))?
            }
            0x8a | 0x8b => {
                // LONG1, LONG4
                let n = if op == 0x8a {
                    self.le(r, 1)?
                } else {
                    self.le(r, 4)?
                };
                let b = self.bytes(r, n)?;
                self.push(Self::int_from_le(b))?
            }
            b'I' | b'L' => {
                let line = self.line(r)?;
                let t = line.trim_end_matches('L');
                let node = match t {
                    "00" if op == b'I' => Node::Bool(false),
                    "01" if op == b'I' => Node::Bool(true),
                    _ => t
                        .parse::<i64>()
                        .map(Node::Int)
                        .unwrap_or(Node::BigInt(Vec::new())),
                };
                self.push(node)?
            }
            b'G' => {
                let mut b = [0u8; 8];
                self.exact(r, &mut b)?;
                self.push(Node::Float(f64::from_be_bytes(b)))?
            }
            b'F' => {
                let line = self.line(r)?;
                let v = line
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| err!("FLOAT {line:?} is not a number"))?;
                self.push(Node::Float(v))?
            }
            // Strings and bytes.
            b'X' | 0x8c | 0x8d => {
                let n = match op {
                    b'X' => self.le(r, 4)?,
                    0x8c => self.le(r, 1)?,
                    _ => self.le(r, 8)?,
                };
                let b = self.bytes(r, n)?;
                self.text(b)?
            }
            b'T' | b'U' => {
                // BINSTRING, SHORT_BINSTRING (Python 2 str)
                let n = if op == b'T' {
                    self.le(r, 4)?
                } else {
                    self.le(r, 1)?
                };
                let b = self.bytes(r, n)?;
                self.text(b)?
            }
            b'B' | b'C' | 0x8e | 0x96 => {
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                let n = match op {
                    b'B' => self.le(r, 4)?,
                    b'C' => self.le(r, 1)?,
                    _ => self.le(r, 8)?,
                };
                let b = self.bytes(r, n)?;
                self.push(Node::Bytes(b))?
            }
            b'S' | b'V' => {
                // STRING (a quoted repr), UNICODE (raw-unicode-escape): kept as written.
                let line = self.line(r)?;
                let s = if op == b'S' {
                    line.trim_matches(|c| c == '\'' || c == '"').to_string()
                } else {
                    line
                };
                self.push(Node::Str(s))?
            }
            // Containers.
            b')' => self.push(Node::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.charge(items.len())?;
                self.push(Node::Tuple(items))?
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
                items.reverse();
                self.charge(n)?;
                self.push(Node::Tuple(items))?
            }
            b']' => self.push(Node::List(Vec::new()))?,
            b'l' => {
                let items = self.pop_mark()?;
                self.charge(items.len())?;
                self.push(Node::List(items))?
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)?
            }
            b'}' => self.push(Node::Dict(Vec::new()))?,
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = Self::pairs(items)?;
                self.charge(pairs.len())?;
                self.push(Node::Dict(pairs))?
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![(k, v)])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                let pairs = Self::pairs(items)?;
                self.set_items(pairs)?
            }
            0x8f => self.push(Node::Set(Vec::new()))?,
            0x90 => {
                // ADDITEMS
                let items = self.pop_mark()?;
                self.append(items)?
            }
            0x91 => {
                // FROZENSET
                let items = self.pop_mark()?;
                self.charge(items.len())?;
                self.push(Node::Set(items))?
            }
            // Memo.
            b'p' => {
                let line = self.line(r)?;
                let key = line
                    .trim()
                    .parse()
                    .map_err(|_| err!("PUT {line:?} is not an index"))?;
                self.memo_put(key)?
            }
            b'q' => {
                let k = self.le(r, 1)?;
                self.memo_put(k)?
            }
            b'r' => {
                let k = self.le(r, 4)?;
                self.memo_put(k)?
            }
            0x94 => {
                // MEMOIZE
                let k = self.memo.len() as u64;
                self.memo_put(k)?
            }
            b'g' => {
                let line = self.line(r)?;
                let key = line
                    .trim()
                    .parse()
                    .map_err(|_| err!("GET {line:?} is not an index"))?;
                self.memo_get(key)?
            }
            b'h' => {
                let k = self.le(r, 1)?;
                self.memo_get(k)?
            }
            b'j' => {
                let k = self.le(r, 4)?;
                self.memo_get(k)?
            }
            // Classes, calls and state: recorded, never executed.
            b'c' => {
                let module = self.line(r)?;
                let name = self.line(r)?;
                self.push(Node::Global { module, name })?
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop()?;
                let module = self.pop()?;
                let (Node::Str(module), Node::Str(name)) = (
                    self.nodes[module as usize].clone(),
                    self.nodes[name as usize].clone(),
                ) else {
                    bail!("STACK_GLOBAL needs two strings");
                };
                self.push(Node::Global { module, name })?
            }
            b'R' | 0x81 => {
                // REDUCE, NEWOBJ
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)?
            }
            0x92 => {
                // NEWOBJ_EX (keyword arguments dropped)
                let _kwargs = self.pop()?;
                let args = self.pop()?;
                let callable = self.pop()?;
                self.call(callable, args)?
            }
            b'i' => {
                // INST module\nname\n, arguments above the mark
                let module = self.line(r)?;
                let name = self.line(r)?;
                let items = self.pop_mark()?;
                let callable = self.add(Node::Global { module, name })?;
                self.charge(items.len())?;
                let args = self.add(Node::Tuple(items))?;
                self.call(callable, args)?
            }
            b'o' => {
                // OBJ: class and arguments above the mark
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    bail!("OBJ without a class");
                }
                let callable = items.remove(0);
                self.charge(items.len())?;
                let args = self.add(Node::Tuple(items))?;
                self.call(callable, args)?
            }
            b'b' => {
                // BUILD: the state of the object below it.
                let state = self.pop()?;
                let target = self.top()?;
                if let Node::Object { state: s, .. } = &mut self.nodes[target as usize] {
                    *s = Some(state);
                }
                // Anything else (the `_metadata` of an OrderedDict state_dict) has no state we use.
            }
            b'P' => {
                let line = self.line(r)?;
                let id = self.add(Node::Str(line))?;
                self.push(Node::PersistentId(id))?
            }
            b'Q' => {
                let id = self.pop()?;
                self.push(Node::PersistentId(id))?
            }
            0x82..=0x84 => bail!("copyreg extension codes (EXT1/2/4) are not supported"),
            0x97 | 0x98 => bail!("out-of-band buffers (pickle protocol 5) are not supported"),
            other => bail!("unknown opcode 0x{other:02x}: not a pickle, or a corrupt one"),
        }
        Ok(false)
    }
}

fn kind(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "bool",
        Node::Int(_) | Node::BigInt(_) => "int",
        Node::Float(_) => "float",
        Node::Str(_) => "str",
        Node::Bytes(_) => "bytes",
        Node::Tuple(_) => "tuple",
        Node::List(_) => "list",
        Node::Dict(_) => "dict",
        Node::Set(_) => "set",
        Node::Global { .. } => "class",
        Node::Object { .. } => "object",
        Node::PersistentId(_) => "persistent id",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Pickle> {
        read(&mut std::io::Cursor::new(bytes))
    }

    #[test]
    fn reads_protocol_2_and_4_values() {
        // pickle.dumps({'a': [1, 2.5, None], 'b': ('x', True)}, protocol=2)
        let p2 = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00NeX\x01\x00\x00\x00bq\x03X\x01\x00\x00\x00xq\x04\x88\x86q\x05u.";
        // The same with protocol=4 (FRAME, SHORT_BINUNICODE, MEMOIZE).
        let p4 = b"\x80\x04\x95$\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00Ne\x8c\x01b\x94\x8c\x01x\x94\x88\x86\x94u.";
        for bytes in [&p2[..], &p4[..]] {
            let p = parse(bytes).unwrap();
            let a = p.get(p.root, "a").unwrap();
            let items = p.tuple(a).unwrap();
            assert_eq!(p.int(items[0]), Some(1));
            assert_eq!(p.node(items[1]), &Node::Float(2.5));
            assert_eq!(p.node(items[2]), &Node::None);
            let b = p.tuple(p.get(p.root, "b").unwrap()).unwrap();
            assert_eq!(p.str(b[0]), Some("x"));
            assert_eq!(p.node(b[1]), &Node::Bool(true));
        }
    }

    #[test]
    fn classes_become_inert_records() {
        // argparse.Namespace(lr=0.5) at protocol 2: GLOBAL, EMPTY_TUPLE, NEWOBJ, dict, BUILD.
        let bytes = b"\x80\x02cargparse\nNamespace\nq\x00)\x81q\x01}q\x02X\x02\x00\x00\x00lrq\x03G?\xe0\x00\x00\x00\x00\x00\x00sb.";
        let p = parse(bytes).unwrap();
        assert_eq!(p.class_name(p.root).as_deref(), Some("argparse.Namespace"));
        let Node::Object { state: Some(s), .. } = p.node(p.root) else {
            panic!("{:?}", p.node(p.root));
        };
        assert_eq!(p.node(p.get(*s, "lr").unwrap()), &Node::Float(0.5));
    }

    #[test]
    fn memo_shares_instead_of_copying() {
        // A list appended to itself through the memo 20 times: a copying reader doubles it each
        // time (2²⁰ items); here it is one node referring to itself.
        let mut bytes = b"\x80\x02]q\x00".to_vec();
        for _ in 0..20 {
            bytes.extend_from_slice(b"h\x00a");
        }
        bytes.push(b'.');
        let p = parse(&bytes).unwrap();
        assert_eq!(p.tuple(p.root).unwrap().len(), 20);
        assert!(p.nodes.len() < 5);
    }

    #[test]
    fn hostile_pickles_are_errors() {
        let deep: Vec<u8> = [&b"\x80\x02"[..], &[b']'; 300_000], &[b'a'; 299_999], b"."].concat();
        // Deep nesting is fine (no recursion): the value is one list holding one list …
        assert!(parse(&deep).is_ok());
        let huge_string = [&b"\x80\x02X"[..], &0xFFFF_FFF0u32.to_le_bytes(), b"abc"].concat();
        let too_many = [&b"\x80\x02"[..], &vec![b'N'; MAX_UNITS], b"."].concat();
        for (bytes, says) in [
            (&huge_string[..], "truncated"),
            (&b"\x80\x02K"[..], "truncated"),
            (b"\x80\x02t.", "no mark"),
            (b"\x80\x02h\x05.", "memo entry 5"),
            (b"\x80\x02N\x00.", "unknown opcode"),
            (b"\x80\x09N.", "protocol 9"),
            (b"\x80\x02.", "without a value"),
            (b"\x80\x02NNu.", "no mark"),
            (b"\x80\x02K\x01K\x02s.", "no value on the stack"),
            (
                b"\x80\x02K\x00K\x01K\x02s.",
                "needs a dict, found a value of type int",
            ),
            (&too_many[..], "more than"),
        ] {
            let err = format!("{:#}", parse(bytes).unwrap_err());
            assert!(err.contains(says), "{says:?} not in {err}");
        }
    }
}
