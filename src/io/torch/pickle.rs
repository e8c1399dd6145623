//! The `data.pkl` of a `torch.save` archive, read by a pickle machine that knows only what a
//! state dict is made of: dicts, tuples, lists, strings, numbers, `None`/`True`/`False`, and
//! the few globals PyTorch's pickler writes for tensors (`torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, the typed `torch.*Storage` classes, `collections.OrderedDict`, and
//! `torch.{float32, …}` dtypes). Nothing is ever imported or called: a global outside that
//! list (`os.system`, `builtins.eval`, a tensor subclass's `_rebuild_from_type_v2` …) is
//! refused by name, which is what `torch.load(weights_only=True)` does with its allowlist
//! (`torch/_weights_only_unpickler.py`).
//!
//! Opcodes: protocol 2 as `torch.save` writes it (`pickle_protocol=2`), plus protocol 4/5's
//! `FRAME`, `MEMOIZE`, `SHORT_BINUNICODE` and `STACK_GLOBAL` for files saved with a newer
//! protocol. Containers are reference-counted so that a memo fetched many times is shared, not
//! copied (a hostile pickle cannot grow memory exponentially), and the stack, memo and
//! container sizes are bounded by the pickle's own length.

use std::collections::HashMap;
use std::rc::Rc;

/// A pickled value.
#[derive(Debug, Clone)]
pub(super) enum Val {
    None,
    /// A value no tensor is built from (a bool, a float, bytes): kept as a placeholder.
    Other,
    Int(i64),
    Str(Rc<str>),
    /// A container and its nesting depth (1 for one holding no container).
    Tuple(Rc<Vec<Val>>, u32),
    List(Rc<Vec<Val>>, u32),
    Dict(Rc<Vec<(Val, Val)>>, u32),
    /// An allowed global, `module.name`.
    Global(Rc<str>),
    /// A persistent id: `('storage', storage_type, key, location, numel)`.
    Storage {
        class: Rc<str>,
        key: Rc<str>,
        numel: u64,
    },
    /// `_rebuild_tensor_v2(storage, offset, size, stride, …)` or `_rebuild_tensor_v3`.
    Tensor(Rc<Tensor>),
}

/// A tensor as pickled: a view of a storage.
#[derive(Debug)]
pub(super) struct Tensor {
    /// What fixes the element type: a typed storage class (`torch.FloatStorage`), or for
    /// `_rebuild_tensor_v3` the dtype global (`torch.float8_e4m3fn`).
    pub class: Rc<str>,
    pub key: Rc<str>,
    /// The storage's length as the persistent id states it: elements of a typed storage, bytes
    /// of an untyped one.
    pub storage_numel: u64,
    /// Whether the storage is untyped (`_rebuild_tensor_v3`): its numel counts bytes.
    pub untyped: bool,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The globals a state dict's pickle may name: the rebuild functions, `OrderedDict`, the
/// storage classes (those lorakit reads and those it refuses by dtype, so that a complex or
/// quantized tensor is named as such, not as foreign code), and torch's dtypes, which
/// `_rebuild_tensor_v3` takes (every dtype `torch.storage._new_dtypes()` lists: float8, uint16–64,
/// float4 …, saved over an `UntypedStorage`).
const ALLOWED: &[&str] = &[
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "collections.OrderedDict",
    "torch.UntypedStorage",
    "torch.storage.UntypedStorage",
];

/// Storage classes and dtype names (`torch.NAME`) a state dict may name.
const TORCH_NAMES: &[&str] = &[
    "FloatStorage",
    "HalfStorage",
    "BFloat16Storage",
    "DoubleStorage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "ComplexFloatStorage",
    "ComplexDoubleStorage",
    "QInt8Storage",
    "QUInt8Storage",
    "QInt32Storage",
    "QUInt4x2Storage",
    "QUInt2x4Storage",
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "uint16",
    "uint32",
    "uint64",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "complex32",
    "complex64",
    "complex128",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "bits8",
    "bits16",
];

/// Whether `module.name` may appear in a state dict's pickle.
fn allowed(module: &str, name: &str) -> bool {
    (module == "torch" && TORCH_NAMES.contains(&name))
        || ALLOWED.iter().any(|a| {
            a.strip_prefix(module)
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|r| r == name)
        })
}

/// The deepest nesting of containers accepted: a state dict's is 3 (dict, a tensor's
/// arguments, its size). A pickle a byte per level deep would otherwise build values whose
/// recursive drop overflows the stack.
const MAX_DEPTH: u32 = 64;

impl Val {
    fn depth(&self) -> u32 {
        match self {
            Val::Tuple(_, d) | Val::List(_, d) | Val::Dict(_, d) => *d,
            _ => 0,
        }
    }
}

/// The depth of a container holding `items`, refused past [`MAX_DEPTH`].
fn depth_of<'v>(items: impl IntoIterator<Item = &'v Val>) -> Result<u32, String> {
    let d = 1 + items.into_iter().map(Val::depth).max().unwrap_or(0);
    if d > MAX_DEPTH {
        return Err(format!(
            "containers nested over {MAX_DEPTH} deep: not a state dict"
        ));
    }
    Ok(d)
}

fn tuple(items: Vec<Val>) -> Result<Val, String> {
    let d = depth_of(&items)?;
    Ok(Val::Tuple(Rc::new(items), d))
}

fn mark_error(op: u8) -> String {
    format!("pickle opcode 0x{op:02x} without a MARK")
}

/// Runs `data` and returns the value `STOP` leaves.
pub(super) fn load(data: &[u8]) -> Result<Val, String> {
    let mut m = Machine {
        data,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copies: data.len().saturating_mul(4),
    };
    m.run()
}

struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Val>,
    marks: Vec<usize>,
    memo: HashMap<u32, Val>,
    /// Elements a mutation may still copy: a container shared with the memo (or a `DUP`) is
    /// copied before it changes ([`Rc::make_mut`]), and a pickle re-storing a growing dict
    /// before every `SETITEM` would copy it each time, quadratic in the pickle's length.
    /// `torch.save` copies each container at most once, while empty.
    copies: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("the pickle ends inside an opcode at byte {}", self.at))?;
        let data: &'a [u8] = self.data;
        self.at = end;
        Ok(&data[end - n..end])
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn pop(&mut self) -> Result<Val, String> {
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn top(&mut self) -> Result<&mut Val, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "pickle stack underflow".to_string())
    }

    /// The items above the last mark, which is removed.
    fn pop_mark(&mut self, op: u8) -> Result<Vec<Val>, String> {
        let m = self.marks.pop().ok_or_else(|| mark_error(op))?;
        if m > self.stack.len() {
            return Err(mark_error(op));
        }
        Ok(self.stack.split_off(m))
    }

    fn string(&mut self, n: usize) -> Result<Val, String> {
        let s = self.take(n)?;
        let s = std::str::from_utf8(s).map_err(|_| "a pickled string that is not UTF-8")?;
        Ok(Val::Str(s.into()))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<Val, String> {
        let full = format!("{module}.{name}");
        if allowed(module, name) {
            Ok(Val::Global(full.into()))
        } else {
            Err(format!(
                "the pickle names `{full}`, which is not part of a tensor state dict; lorakit never runs pickled code"
            ))
        }
    }

    fn run(&mut self) -> Result<Val, String> {
        // Every opcode consumes at least one byte and pushes at most one value.
        let limit = self.data.len();
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let _proto = self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark(op)?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Val::Dict(Rc::new(Vec::new()), 1)),
                b']' => self.stack.push(Val::List(Rc::new(Vec::new()), 1)),
                b')' => self.stack.push(Val::Tuple(Rc::new(Vec::new()), 1)),
                b't' => {
                    let items = self.pop_mark(op)?;
                    self.stack.push(tuple(items)?);
                }
                b'l' => {
                    let items = self.pop_mark(op)?;
                    let d = depth_of(&items)?;
                    self.stack.push(Val::List(Rc::new(items), d));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(tuple(items)?);
                }
                b'q' => {
                    let k = u32::from(self.u8()?);
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'r' => {
                    let k = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' {
                        u32::from(self.u8()?)
                    } else {
                        self.u32()?
                    };
                    let v =
                        self.memo.get(&k).cloned().ok_or_else(|| {
                            format!("pickle memo {k} fetched before it was stored")
                        })?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                b'B' | b'C' => {
                    let n = if op == b'B' {
                        self.u32()? as usize
                    } else {
                        usize::from(self.u8()?)
                    };
                    self.take(n)?;
                    self.stack.push(Val::Other);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4"));
                    self.stack.push(Val::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Val::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2"));
                    self.stack.push(Val::Int(v.into()));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(format!("a pickled integer of {n} bytes"));
                    }
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        0xFF
                    } else {
                        0
                    };
                    let mut w = [fill; 8];
                    w[..n].copy_from_slice(b);
                    self.stack.push(Val::Int(i64::from_le_bytes(w)));
                }
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Val::Other);
                }
                b'N' => self.stack.push(Val::None),
                0x88 | 0x89 => self.stack.push(Val::Other),
                b'c' => {
                    let rest = &self.data[self.at..];
                    let line = |s: &[u8]| s.iter().position(|&c| c == b'\n');
                    let m = line(rest).ok_or("a pickle GLOBAL without its newline")?;
                    let n = line(&rest[m + 1..]).ok_or("a pickle GLOBAL without its newline")?;
                    let module = String::from_utf8_lossy(&rest[..m]).into_owned();
                    let name = String::from_utf8_lossy(&rest[m + 1..m + 1 + n]).into_owned();
                    self.at += m + n + 2;
                    let v = self.global(&module, &name)?;
                    self.stack.push(v);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Val::Str(module), Val::Str(name)) = (module, name) else {
                        return Err("a pickle STACK_GLOBAL of non-strings".into());
                    };
                    let v = self.global(&module, &name)?;
                    self.stack.push(v);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent(pid)?);
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    self.stack.push(reduce(f, args)?);
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict's backward hooks (none) or a
                    // parameter's; a tensor's own state is not used.
                    self.pop()?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let copies = &mut self.copies;
                    set_items(self.stack.last_mut(), vec![k, v], copies)?;
                }
                b'u' => {
                    let items = self.pop_mark(op)?;
                    if items.len() % 2 != 0 {
                        return Err("a pickle SETITEMS with an odd number of items".into());
                    }
                    let copies = &mut self.copies;
                    set_items(self.stack.last_mut(), items, copies)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let copies = &mut self.copies;
                    append(self.stack.last_mut(), vec![v], copies)?;
                }
                b'e' => {
                    let items = self.pop_mark(op)?;
                    let copies = &mut self.copies;
                    append(self.stack.last_mut(), items, copies)?;
                }
                other => {
                    return Err(format!(
                    "pickle opcode 0x{other:02x} at byte {} is not one a tensor state dict uses",
                    self.at - 1
                ))
                }
            }
            if self.stack.len() > limit || self.memo.len() > limit {
                return Err("a pickle that grows past its own length".into());
            }
        }
    }
}

/// Charges the copy [`Rc::make_mut`] is about to make of a shared container of `len`
/// elements against the budget ([`Machine::copies`]).
fn charge(shared: bool, len: usize, copies: &mut usize) -> Result<(), String> {
    if shared {
        *copies = copies
            .checked_sub(len)
            .ok_or("a pickle that copies its containers over and over (quadratic work)")?;
    }
    Ok(())
}

fn set_items(target: Option<&mut Val>, items: Vec<Val>, copies: &mut usize) -> Result<(), String> {
    let Some(Val::Dict(d, depth)) = target else {
        return Err("a pickle SETITEM on something that is not a dict".into());
    };
    *depth = (*depth).max(depth_of(&items)?);
    charge(Rc::strong_count(d) > 1, d.len(), copies)?;
    let d = Rc::make_mut(d);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        d.push((k, v));
    }
    Ok(())
}

fn append(target: Option<&mut Val>, items: Vec<Val>, copies: &mut usize) -> Result<(), String> {
    let Some(Val::List(l, depth)) = target else {
        return Err("a pickle APPEND on something that is not a list".into());
    };
    *depth = (*depth).max(depth_of(&items)?);
    charge(Rc::strong_count(l) > 1, l.len(), copies)?;
    Rc::make_mut(l).extend(items);
    Ok(())
}

/// `('storage', torch.XStorage, key, location, numel)`.
fn persistent(pid: Val) -> Result<Val, String> {
    let Val::Tuple(t, _) = pid else {
        return Err("a pickle persistent id that is not a tuple".into());
    };
    match t.as_slice() {
        [Val::Str(kind), Val::Global(class), Val::Str(key), _, Val::Int(numel), ..]
            if &**kind == "storage" && *numel >= 0 =>
        {
            Ok(Val::Storage {
                class: class.clone(),
                key: key.clone(),
                numel: *numel as u64,
            })
        }
        _ => Err("a pickle persistent id that is not a torch storage".into()),
    }
}

fn uints(v: &Val, what: &str) -> Result<Vec<u64>, String> {
    let Val::Tuple(t, _) = v else {
        return Err(format!("a tensor's {what} that is not a tuple"));
    };
    t.iter()
        .map(|x| match x {
            Val::Int(i) if *i >= 0 => Ok(*i as u64),
            _ => Err(format!(
                "a tensor's {what} holds a negative or non-integer value"
            )),
        })
        .collect()
}

fn reduce(f: Val, args: Val) -> Result<Val, String> {
    let Val::Global(f) = f else {
        return Err("a pickle REDUCE of something that is not an allowed global".into());
    };
    let Val::Tuple(args, _) = args else {
        return Err(format!("`{f}` called with arguments that are not a tuple"));
    };
    match &*f {
        "collections.OrderedDict" => Ok(Val::Dict(Rc::new(Vec::new()), 1)),
        "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor_v3" => {
            let v3 = f.ends_with("v3");
            let (storage, rest) = args
                .split_first()
                .ok_or_else(|| format!("`{f}` called without arguments"))?;
            let (Val::Storage { class, key, numel }, [Val::Int(offset), size, stride, more @ ..]) =
                (storage, rest)
            else {
                return Err(format!("`{f}` called with arguments of the wrong kinds"));
            };
            if *offset < 0 {
                return Err(format!("`{f}` called with a negative storage offset"));
            }
            // v3: `(storage, offset, size, stride, requires_grad, hooks, dtype, …)`, the element
            // type from the dtype over an untyped storage.
            let class = if v3 {
                match more.get(2) {
                    Some(Val::Global(dtype)) => dtype.clone(),
                    _ => return Err(format!("`{f}` called without a dtype")),
                }
            } else {
                class.clone()
            };
            let (size, stride) = (uints(size, "size")?, uints(stride, "stride")?);
            if size.len() != stride.len() {
                return Err("a tensor whose size and stride differ in length".into());
            }
            Ok(Val::Tensor(Rc::new(Tensor {
                class,
                key: key.clone(),
                storage_numel: *numel,
                untyped: v3,
                offset: *offset as u64,
                size,
                stride,
            })))
        }
        "torch._utils._rebuild_parameter" => match args.first() {
            Some(t @ Val::Tensor(_)) => Ok(t.clone()),
            _ => Err("`_rebuild_parameter` of something that is not a tensor".into()),
        },
        other => Err(format!("`{other}` is not callable here")),
    }
}
