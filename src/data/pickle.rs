//! A reader for the part of Python's pickle format that dictionaries of numpy arrays use: the
//! CIFAR-10/100 "python version" batches (`cifar-10-batches-py`, `cifar-100-python`) that
//! torchvision downloads.
//!
//! Those files are protocol-2 pickles written by Python 2: a dict whose keys and byte strings are
//! Python 2 `str`, labels as lists of ints, and the pixels as a numpy array, which pickles as a
//! call of `numpy.core.multiarray._reconstruct` followed by `BUILD` with the state tuple
//! `(version, shape, dtype, fortran_order, raw_bytes)`. Re-pickled copies from Python 3 are read
//! too: protocols 2 to 5, numpy 1 and 2 module names, `_codecs.encode` byte strings (protocol 2)
//! and `_frombuffer` arrays (protocol 5, in-band buffers).
//!
//! Why not a crate: `serde-pickle` 1.2, the maintained Rust pickle crate, can keep numpy's
//! `BUILD` state (`keep_restore_state` + `replace_unresolved_globals`), but it clones a memoised
//! value at every reference (a file of a few hundred bytes can then expand exponentially), builds
//! and drops values recursively (deep nesting overflows the stack, which aborts the process), and
//! replaces numpy's dtype by its state, so the element type cannot be checked. candle's
//! `pickle` module reads only the opcodes PyTorch files use (no Python 2 strings) and allocates a
//! declared length before reading it. Here every object lives in one flat arena and references
//! are indices, so sharing is free and nothing recurses; byte strings borrow from the input; the
//! number of objects is bounded; and nothing is executed: the few callables numpy arrays need are
//! recognised by name when the array is read back, every other one is an opaque object.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

/// Most objects, container entries and memo entries one pickle may create (4 Mi: a CIFAR-100
/// training file needs about 250 000; the arena then stays under ~200 MB whatever the input).
pub const MAX_CELLS: usize = 1 << 22;

/// Why a pickle could not be read: the problem and, while parsing, the byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PickleError(String);

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PickleError {}

type Result<T> = std::result::Result<T, PickleError>;

fn fail<T>(problem: impl Into<String>) -> Result<T> {
    Err(PickleError(problem.into()))
}

/// Index of an object in `Pickle::objects`.
pub type Id = usize;

/// One unpickled object. Containers hold ids, so an object referenced twice is stored once.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// Python 2 `str`, `bytes` or `bytearray`: a range of the input.
    Bytes(Range<usize>),
    /// Python 3 `str` (Python 2 `unicode`): a range of the input, UTF-8 checked when read.
    Text(Range<usize>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    /// A module-level name (`GLOBAL`, `STACK_GLOBAL`); both are [`Object::Text`].
    Global {
        module: Id,
        name: Id,
    },
    /// `callable(*args)` (`REDUCE`, `NEWOBJ`), never executed, with the state `BUILD` gave it.
    Call {
        callable: Id,
        args: Id,
        state: Option<Id>,
    },
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "a bool",
            Object::Int(_) => "an int",
            Object::Float(_) => "a float",
            Object::Bytes(_) => "a byte string",
            Object::Text(_) => "a text string",
            Object::List(_) => "a list",
            Object::Tuple(_) => "a tuple",
            Object::Dict(_) => "a dict",
            Object::Global { .. } => "a global name",
            Object::Call { .. } => "an object",
        }
    }
}

/// A parsed pickle, borrowing its byte strings from the input.
#[derive(Debug)]
pub struct Pickle<'a> {
    input: &'a [u8],
    objects: Vec<Object>,
    root: Id,
}

/// A C-ordered `uint8` numpy array read from a pickle.
#[derive(Debug)]
pub struct U8Array<'a> {
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
}

/// The unpickling machine: a stack of ids, the positions of its marks, the memo, and the arena.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    max_cells: usize,
    objects: Vec<Object>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    cells: usize,
}

impl<'a> Parser<'a> {
    fn spend(&mut self, n: usize) -> Result<()> {
        self.cells += n;
        if self.cells > self.max_cells {
            return fail(format!(
                "holds more than {} objects, far more than a data batch",
                self.max_cells
            ));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<Range<usize>> {
        let start = self.pos;
        match start.checked_add(n).filter(|&end| end <= self.input.len()) {
            Some(end) => {
                self.pos = end;
                Ok(start..end)
            }
            None => fail(format!(
                "truncated: needs {n} bytes at byte {start} but the file ends at {}",
                self.input.len()
            )),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let r = self.take(N)?;
        Ok(self.input[r].try_into().expect("take returned N bytes"))
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.bytes::<1>()?[0])
    }

    /// A length prefix of `N` little-endian bytes, then that many bytes.
    fn counted<const N: usize>(&mut self) -> Result<Range<usize>> {
        let mut le = [0u8; 8];
        le[..N].copy_from_slice(&self.bytes::<N>()?);
        let n = u64::from_le_bytes(le);
        // A length beyond the input is truncation, whatever it says (no allocation follows it).
        self.take(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// `GLOBAL`'s newline-terminated text argument.
    fn line(&mut self) -> Result<Range<usize>> {
        let start = self.pos;
        match self.input[start..].iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos = start + n + 1;
                Ok(start..start + n)
            }
            None => fail(format!("truncated: unterminated name at byte {start}")),
        }
    }

    fn alloc(&mut self, obj: Object) -> Result<Id> {
        self.spend(1)?;
        self.objects.push(obj);
        Ok(self.objects.len() - 1)
    }

    fn push(&mut self, id: Id) -> Result<()> {
        if self.stack.len() >= self.max_cells {
            return fail(format!("stack deeper than {} entries", self.max_cells));
        }
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, obj: Object) -> Result<()> {
        let id = self.alloc(obj)?;
        self.push(id)
    }

    fn pop(&mut self) -> Result<Id> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return fail("an opcode pops past a MARK");
        }
        self.stack
            .pop()
            .map_or_else(|| fail("an opcode pops an empty stack"), Ok)
    }

    fn top(&self) -> Result<Id> {
        match self.stack.last() {
            Some(&id) if self.marks.last().is_none_or(|&m| m < self.stack.len()) => Ok(id),
            _ => fail("an opcode needs an object on the stack and finds none"),
        }
    }

    /// Everything pushed since the last MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let Some(mark) = self.marks.pop() else {
            return fail("an opcode needs a MARK and finds none");
        };
        Ok(self.stack.split_off(mark))
    }

    fn tuple(&mut self, n: usize) -> Result<()> {
        if self.stack.len() < n + self.marks.last().copied().unwrap_or(0) {
            return fail(format!("TUPLE{n} with fewer than {n} objects on the stack"));
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.spend(n)?;
        self.push_new(Object::Tuple(items))
    }

    fn memo_put(&mut self, key: u64) -> Result<()> {
        let id = self.top()?;
        self.spend(1)?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<()> {
        match self.memo.get(&key) {
            Some(&id) => self.push(id),
            None => fail(format!(
                "refers to memo entry {key}, which was never stored"
            )),
        }
    }

    /// The list under the top `items` (APPEND, APPENDS).
    fn extend_list(&mut self, items: Vec<Id>) -> Result<()> {
        let list = self.top()?;
        self.spend(items.len())?;
        match &mut self.objects[list] {
            Object::List(v) => {
                v.extend(items);
                Ok(())
            }
            other => fail(format!("APPEND to {}, not a list", other.kind())),
        }
    }

    fn extend_dict(&mut self, items: Vec<Id>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return fail("SETITEMS with a key but no value");
        }
        let dict = self.top()?;
        self.spend(items.len() / 2)?;
        match &mut self.objects[dict] {
            Object::Dict(v) => {
                v.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
                Ok(())
            }
            other => fail(format!("SETITEM on {}, not a dict", other.kind())),
        }
    }

    fn run(mut self) -> Result<Pickle<'a>> {
        loop {
            let at = self.pos;
            let code = self.byte()?;
            self.step(code)
                .map_err(|e| PickleError(format!("{e} (opcode 0x{code:02x} at byte {at})")))?;
            if code == op::STOP {
                let root = *self.stack.last().expect("STOP checked the stack");
                return Ok(Pickle {
                    input: self.input,
                    objects: self.objects,
                    root,
                });
            }
        }
    }

    fn step(&mut self, code: u8) -> Result<()> {
        use op::*;
        match code {
            PROTO => {
                let v = self.byte()?;
                if v > 5 {
                    return fail(format!("pickle protocol {v} is newer than 5"));
                }
            }
            FRAME => {
                self.take(8)?;
            }
            STOP => {
                self.top()?;
            }
            MARK => {
                self.spend(1)?;
                self.marks.push(self.stack.len());
            }
            POP => {
                self.pop()?;
            }
            POP_MARK => {
                self.pop_mark()?;
            }
            DUP => {
                let id = self.top()?;
                self.push(id)?;
            }
            NONE => self.push_new(Object::None)?,
            NEWTRUE => self.push_new(Object::Bool(true))?,
            NEWFALSE => self.push_new(Object::Bool(false))?,
            BININT1 => {
                let v = self.byte()?;
                self.push_new(Object::Int(v.into()))?
            }
            BININT2 => {
                let v = u16::from_le_bytes(self.bytes()?);
                self.push_new(Object::Int(v.into()))?
            }
            BININT => {
                let v = i32::from_le_bytes(self.bytes()?);
                self.push_new(Object::Int(v.into()))?
            }
            LONG1 => {
                let n = self.byte()? as usize;
                let r = self.take(n)?;
                if n > 8 {
                    return fail(format!("a {n}-byte integer does not fit in 64 bits"));
                }
                let le = &self.input[r];
                // two's complement, little-endian, sign-extended from the last byte
                let fill = if le.last().is_some_and(|&b| b & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut b = [fill; 8];
                b[..n].copy_from_slice(le);
                self.push_new(Object::Int(i64::from_le_bytes(b)))?
            }
            BINFLOAT => {
                let v = f64::from_be_bytes(self.bytes()?);
                self.push_new(Object::Float(v))?
            }
            SHORT_BINSTRING | SHORT_BINBYTES => {
                let r = self.counted::<1>()?;
                self.push_new(Object::Bytes(r))?
            }
            BINSTRING => {
                let n = i32::from_le_bytes(self.bytes()?);
                let Ok(n) = usize::try_from(n) else {
                    return fail(format!("negative string length {n}"));
                };
                let r = self.take(n)?;
                self.push_new(Object::Bytes(r))?
            }
            BINBYTES => {
                let r = self.counted::<4>()?;
                self.push_new(Object::Bytes(r))?
            }
            BINBYTES8 | BYTEARRAY8 => {
                let r = self.counted::<8>()?;
                self.push_new(Object::Bytes(r))?
            }
            SHORT_BINUNICODE => {
                let r = self.counted::<1>()?;
                self.push_new(Object::Text(r))?
            }
            BINUNICODE => {
                let r = self.counted::<4>()?;
                self.push_new(Object::Text(r))?
            }
            BINUNICODE8 => {
                let r = self.counted::<8>()?;
                self.push_new(Object::Text(r))?
            }
            EMPTY_LIST => self.push_new(Object::List(Vec::new()))?,
            EMPTY_TUPLE => self.push_new(Object::Tuple(Vec::new()))?,
            EMPTY_DICT => self.push_new(Object::Dict(Vec::new()))?,
            LIST => {
                let items = self.pop_mark()?;
                self.spend(items.len())?;
                self.push_new(Object::List(items))?
            }
            TUPLE => {
                let items = self.pop_mark()?;
                self.spend(items.len())?;
                self.push_new(Object::Tuple(items))?
            }
            DICT => {
                let items = self.pop_mark()?;
                self.push_new(Object::Dict(Vec::new()))?;
                self.extend_dict(items)?
            }
            TUPLE1 => self.tuple(1)?,
            TUPLE2 => self.tuple(2)?,
            TUPLE3 => self.tuple(3)?,
            APPEND => {
                let item = self.pop()?;
                self.extend_list(vec![item])?
            }
            APPENDS => {
                let items = self.pop_mark()?;
                self.extend_list(items)?
            }
            SETITEM => {
                let value = self.pop()?;
                let key = self.pop()?;
                self.extend_dict(vec![key, value])?
            }
            SETITEMS => {
                let items = self.pop_mark()?;
                self.extend_dict(items)?
            }
            GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                let module = self.alloc(Object::Text(module))?;
                let name = self.alloc(Object::Text(name))?;
                self.push_new(Object::Global { module, name })?
            }
            STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                for id in [module, name] {
                    if !matches!(self.objects[id], Object::Text(_)) {
                        return fail(format!(
                            "STACK_GLOBAL with {} as a name",
                            self.objects[id].kind()
                        ));
                    }
                }
                self.push_new(Object::Global { module, name })?
            }
            REDUCE | NEWOBJ => {
                let args = self.pop()?;
                let callable = self.pop()?;
                if !matches!(self.objects[args], Object::Tuple(_)) {
                    return fail(format!(
                        "call arguments are {}, not a tuple",
                        self.objects[args].kind()
                    ));
                }
                self.push_new(Object::Call {
                    callable,
                    args,
                    state: None,
                })?
            }
            BUILD => {
                let new_state = self.pop()?;
                let obj = self.top()?;
                match &mut self.objects[obj] {
                    Object::Call { state, .. } if state.is_none() => *state = Some(new_state),
                    other => return fail(format!("BUILD on {}", other.kind())),
                }
            }
            BINPUT => {
                let k = self.byte()?;
                self.memo_put(k.into())?
            }
            LONG_BINPUT => {
                let k = u32::from_le_bytes(self.bytes()?);
                self.memo_put(k.into())?
            }
            MEMOIZE => {
                let k = self.memo.len() as u64;
                self.memo_put(k)?
            }
            BINGET => {
                let k = self.byte()?;
                self.memo_get(k.into())?
            }
            LONG_BINGET => {
                let k = u32::from_le_bytes(self.bytes()?);
                self.memo_get(k.into())?
            }
            other => {
                return fail(format!(
                    "unsupported pickle opcode 0x{other:02x} (not one a numpy-array dict uses)"
                ))
            }
        }
        Ok(())
    }
}

/// numpy's module for `_reconstruct` (numpy 1: `numpy.core`, numpy 2: `numpy._core`).
const MULTIARRAY: [&str; 2] = ["numpy.core.multiarray", "numpy._core.multiarray"];
/// numpy's module for `_frombuffer` (protocol-5 pickles).
const NUMERIC: [&str; 2] = ["numpy.core.numeric", "numpy._core.numeric"];

impl<'a> Pickle<'a> {
    /// Parse a whole pickle (up to its `STOP`).
    pub fn parse(input: &'a [u8]) -> Result<Self> {
        Self::parse_with_limit(input, MAX_CELLS)
    }

    /// [`Pickle::parse`] with another bound on objects, container entries and memo entries.
    pub fn parse_with_limit(input: &'a [u8], max_cells: usize) -> Result<Self> {
        if input.is_empty() {
            return fail("file is empty");
        }
        Parser {
            input,
            pos: 0,
            max_cells,
            objects: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            cells: 0,
        }
        .run()
    }

    /// The unpickled object.
    pub fn root(&self) -> Id {
        self.root
    }

    /// The object `id` refers to.
    pub fn object(&self, id: Id) -> &Object {
        &self.objects[id]
    }

    /// A string object's text: Python 3 `str`, or a Python 2 `str` / `bytes` that is UTF-8.
    pub fn text(&self, id: Id) -> Result<&'a str> {
        match self.object(id) {
            Object::Text(r) | Object::Bytes(r) => std::str::from_utf8(&self.input[r.clone()])
                .or_else(|_| fail("a name is not UTF-8 text")),
            other => fail(format!("expected a string, found {}", other.kind())),
        }
    }

    /// `module.name` of a global, if `id` is one.
    fn global(&self, id: Id) -> Option<(&'a str, &'a str)> {
        match self.object(id) {
            Object::Global { module, name } => {
                Some((self.text(*module).ok()?, self.text(*name).ok()?))
            }
            _ => None,
        }
    }

    /// The value under `key` in dict `dict`; keys may be text or bytes (Python 2 `str`, and
    /// Python 3 `bytes` in any protocol). `Ok(None)` when absent, an error when `dict` is not a
    /// dict.
    pub fn get(&self, dict: Id, key: &str) -> Result<Option<Id>> {
        let Object::Dict(items) = self.object(dict) else {
            return fail(format!(
                "expected a dict, found {}",
                self.object(dict).kind()
            ));
        };
        Ok(items
            .iter()
            .find(|&&(k, _)| self.bytes_like(k).is_ok_and(|b| *b == *key.as_bytes()))
            .map(|&(_, v)| v))
    }

    /// The items of a list or tuple.
    fn items(&self, id: Id) -> Result<&[Id]> {
        match self.object(id) {
            Object::List(v) | Object::Tuple(v) => Ok(v),
            other => fail(format!("expected a list, found {}", other.kind())),
        }
    }

    /// A list or tuple of ints.
    pub fn ints(&self, id: Id) -> Result<Vec<i64>> {
        self.items(id)?
            .iter()
            .enumerate()
            .map(|(i, &v)| match self.object(v) {
                Object::Int(n) => Ok(*n),
                other => fail(format!("item {i} is {}, not an int", other.kind())),
            })
            .collect()
    }

    /// A list or tuple of strings, text or UTF-8 bytes.
    pub fn strings(&self, id: Id) -> Result<Vec<String>> {
        self.items(id)?
            .iter()
            .map(|&v| {
                String::from_utf8(self.bytes_like(v)?.into_owned())
                    .or_else(|_| fail("a name is not UTF-8 text"))
            })
            .collect()
    }

    /// The bytes of a byte string, of a text string (its UTF-8), or of
    /// `_codecs.encode(text, "latin1")` (how Python 3 writes `bytes` at protocol 2).
    pub fn bytes_like(&self, id: Id) -> Result<Cow<'a, [u8]>> {
        match self.object(id) {
            Object::Bytes(r) | Object::Text(r) => Ok(Cow::Borrowed(&self.input[r.clone()])),
            Object::Call { callable, args, .. }
                if self.global(*callable) == Some(("_codecs", "encode")) =>
            {
                let args = self.items(*args)?;
                let [text, codec] = args else {
                    return fail("_codecs.encode with other than two arguments");
                };
                if !matches!(self.text(*codec)?, "latin1" | "latin-1") {
                    return fail("byte string encoded with a codec other than latin-1");
                }
                self.text(*text)?
                    .chars()
                    .map(|c| u8::try_from(c).or_else(|_| fail("latin-1 text above U+00FF")))
                    .collect::<Result<Vec<u8>>>()
                    .map(Cow::Owned)
            }
            other => fail(format!("expected a byte string, found {}", other.kind())),
        }
    }

    fn shape(&self, id: Id) -> Result<Vec<usize>> {
        self.ints(id)?
            .into_iter()
            .map(|d| usize::try_from(d).or_else(|_| fail(format!("negative dimension {d}"))))
            .collect()
    }

    /// Checks that a `numpy.dtype(...)` object is `uint8`.
    fn check_u8_dtype(&self, id: Id) -> Result<()> {
        let Object::Call { callable, args, .. } = self.object(id) else {
            return fail(format!("dtype is {}", self.object(id).kind()));
        };
        if self.global(*callable) != Some(("numpy", "dtype")) {
            return fail("dtype is not a numpy.dtype");
        }
        let name = self
            .items(*args)?
            .first()
            .map(|&n| self.text(n))
            .transpose()?;
        match name {
            Some("u1" | "|u1" | "uint8") => Ok(()),
            Some(other) => fail(format!("array of dtype {other}, expected uint8 (u1)")),
            None => fail("numpy.dtype without a type name"),
        }
    }

    /// A C-ordered `uint8` numpy array: `_reconstruct` + `BUILD` state (protocols 2–4) or
    /// `_frombuffer` (protocol 5). The data length must match the shape.
    pub fn u8_array(&self, id: Id) -> Result<U8Array<'a>> {
        let Object::Call {
            callable,
            args,
            state,
        } = self.object(id)
        else {
            return fail(format!(
                "expected a numpy array, found {}",
                self.object(id).kind()
            ));
        };
        let (shape, raw) = match self.global(*callable) {
            Some((m, "_reconstruct")) if MULTIARRAY.contains(&m) => {
                let Some(state) = state else {
                    return fail("numpy array without its state (no BUILD)");
                };
                // (version, shape, dtype, is_fortran, raw) or, in old numpy, without version
                let fields = self.items(*state)?;
                let [shape, dtype, fortran, raw] = match fields {
                    [_, s, d, f, r] | [s, d, f, r] => [*s, *d, *f, *r],
                    _ => return fail("numpy array state is not a 4- or 5-tuple"),
                };
                self.check_u8_dtype(dtype)?;
                if matches!(self.object(fortran), Object::Bool(true) | Object::Int(1)) {
                    return fail("Fortran-ordered array (only C order is supported)");
                }
                (self.shape(shape)?, self.bytes_like(raw)?)
            }
            Some((m, "_frombuffer")) if NUMERIC.contains(&m) => {
                let [buf, dtype, shape, order] = self.items(*args)? else {
                    return fail("_frombuffer with other than four arguments");
                };
                self.check_u8_dtype(*dtype)?;
                if self.text(*order)? != "C" {
                    return fail("Fortran-ordered array (only C order is supported)");
                }
                (self.shape(*shape)?, self.bytes_like(*buf)?)
            }
            Some((m, n)) => return fail(format!("expected a numpy array, found a {m}.{n}")),
            None => return fail("expected a numpy array, found a call of a non-global"),
        };
        let elements = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n == raw.len());
        if elements.is_none() {
            return fail(format!(
                "array of shape {shape:?} holds {} bytes of data",
                raw.len()
            ));
        }
        Ok(U8Array { shape, data: raw })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::PickleWriter;

    /// `pickle.dumps({'a': [1, 2**40, -3, True, 1.5], 'b': b'xy', 'c': ('t', None)}, protocol=2)`
    /// from CPython 3.11.
    const PY3_P2: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01\x8a\x06\x00\x00\x00\x00\x00\x01J\xfd\xff\xff\xff\x88G?\xf8\x00\x00\x00\x00\x00\x00eX\x01\x00\x00\x00bq\x03c_codecs\x0aencode\x0aq\x04X\x02\x00\x00\x00xyq\x05X\x06\x00\x00\x00latin1q\x06\x86q\x07Rq\x08X\x01\x00\x00\x00cq\x09X\x01\x00\x00\x00tq\x0aN\x86q\x0bu.";

    #[test]
    fn reads_what_cpython_writes() {
        let p = Pickle::parse(PY3_P2).unwrap();
        let a = p.get(p.root(), "a").unwrap().unwrap();
        let items = p.items(a).unwrap();
        assert_eq!(p.object(items[0]), &Object::Int(1));
        assert_eq!(p.object(items[1]), &Object::Int(1 << 40));
        assert_eq!(p.object(items[2]), &Object::Int(-3));
        assert_eq!(p.object(items[3]), &Object::Bool(true));
        assert_eq!(p.object(items[4]), &Object::Float(1.5));
        let b = p.get(p.root(), "b").unwrap().unwrap();
        assert_eq!(&*p.bytes_like(b).unwrap(), b"xy");
        let c = p.get(p.root(), "c").unwrap().unwrap();
        assert_eq!(p.text(p.items(c).unwrap()[0]).unwrap(), "t");
        assert!(p.strings(c).is_err(), "None is not a string");
        assert_eq!(p.get(p.root(), "zz").unwrap(), None);
        assert!(p.ints(a).is_err(), "a float is not an int");
    }

    #[test]
    fn python2_numpy_array_round_trips() {
        let pixels: Vec<u8> = (0..24).collect();
        let mut w = PickleWriter::new();
        w.dict_start();
        w.key("data");
        w.numpy_u8(&[4, 6], &pixels);
        w.key("labels");
        w.int_list(&[3, 1, 4, 1]);
        w.dict_end();
        let bytes = w.finish();
        let p = Pickle::parse(&bytes).unwrap();
        let data = p.get(p.root(), "data").unwrap().unwrap();
        let arr = p.u8_array(data).unwrap();
        assert_eq!(arr.shape, vec![4, 6]);
        assert_eq!(&*arr.data, &pixels[..]);
        assert!(
            matches!(arr.data, Cow::Borrowed(_)),
            "no copy of the pixels"
        );
        let labels = p.get(p.root(), "labels").unwrap().unwrap();
        assert_eq!(p.ints(labels).unwrap(), vec![3, 1, 4, 1]);
        // The wrong shape for the data is an error, not a short read.
        let mut w = PickleWriter::new();
        w.numpy_u8(&[5, 6], &pixels);
        let bytes = w.finish();
        let p = Pickle::parse(&bytes).unwrap();
        let e = p.u8_array(p.root()).unwrap_err().to_string();
        assert!(e.contains("[5, 6]") && e.contains("24 bytes"), "{e}");
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let mut w = PickleWriter::new();
        w.dict_start();
        w.key("data");
        w.numpy_u8(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        w.key("labels");
        w.int_list(&[0, 9]);
        w.dict_end();
        let good = w.finish();
        for n in 0..good.len() {
            assert!(Pickle::parse(&good[..n]).is_err(), "prefix of {n} bytes");
        }
        // Every single-byte change must parse or fail cleanly; reading back never panics.
        for i in 0..good.len() {
            for v in [0u8, 0x01, 0x7f, 0x80, 0xff, b'(', b'.', b'b', b'h'] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(p) = Pickle::parse(&bad) {
                    if let Ok(Some(d)) = p.get(p.root(), "data") {
                        let _ = p.u8_array(d);
                    }
                    if let Ok(Some(l)) = p.get(p.root(), "labels") {
                        let _ = p.ints(l);
                    }
                }
            }
        }
    }

    #[test]
    fn hostile_shapes_stay_bounded() {
        // A length prefix of 2^64 − 1 is truncation, found without allocating it.
        let e = Pickle::parse(b"\x80\x05\x8e\xff\xff\xff\xff\xff\xff\xff\xff.").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Nesting a million lists deep: no recursion, so no stack overflow (building or dropping).
        let mut deep = b"\x80\x02".to_vec();
        deep.extend(std::iter::repeat_n(b']', 1_000_000));
        deep.extend(std::iter::repeat_n(b'a', 999_999));
        deep.push(b'.');
        let p = Pickle::parse(&deep).unwrap();
        assert!(matches!(p.object(p.root()), Object::List(v) if v.len() == 1));
        drop(p);
        // "Billion laughs": each level holds the previous one twice. Shared ids, linear memory.
        let mut laughs = b"\x80\x02]q\x00".to_vec();
        for _ in 0..200 {
            laughs.extend_from_slice(b"(h\x00h\x00lq\x00");
        }
        laughs.push(b'.');
        let p = Pickle::parse(&laughs).unwrap();
        assert!(p.objects.len() < 1000);
        // Too many objects: refused with a message, not an out-of-memory (a small limit here
        // keeps the test light; the real one only differs in size).
        let mut many = b"\x80\x02(".to_vec();
        many.extend(std::iter::repeat_n(b'N', 10_000));
        many.extend_from_slice(b"l.");
        assert!(Pickle::parse(&many).is_ok());
        let e = Pickle::parse_with_limit(&many, 9_999)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 9999 objects"), "{e}");
        let mut gets = b"\x80\x02Nq\x00".to_vec();
        for _ in 0..10_000 {
            gets.extend_from_slice(b"h\x00");
        }
        let e = Pickle::parse_with_limit(&gets, 5_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stack deeper than 5000"), "{e}");
        // Cycles (a list holding itself) parse, and reading them back does not loop.
        let p = Pickle::parse(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert!(p.ints(p.root()).is_err());
    }

    #[test]
    fn structural_errors_are_named() {
        for (bytes, says) in [
            (&b""[..], "empty"),
            (b"\x80\x02K\x01", "truncated"),
            (b"\x80\x02.", "none"),
            (b"\x80\x02h\x05.", "memo entry 5"),
            (b"\x80\x02K\x01K\x02a.", "not a list"),
            (b"\x80\x02(e.", "finds none"),
            (b"\x80\x02P1\n.", "unsupported pickle opcode 0x50"),
            (b"\x80\x09.", "protocol 9"),
            (b"\x80\x02N\x85R.", "pops an empty stack"),
            (b"\x80\x02K\x01N\x85b.", "BUILD on an int"),
        ] {
            let e = Pickle::parse(bytes).unwrap_err().to_string();
            assert!(e.contains(says), "{bytes:?}: {e}");
        }
    }
}
