//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): just enough to find struct
//! member offsets, enum values and function names.
//!
//! aya emits no CO-RE relocations for Rust programs, so portwatch resolves every kernel struct
//! field it reads here, at load time, on the running kernel, and passes the offsets to the
//! programs. aya's own BTF type does not expose member lookups, hence this module.

use std::path::Path;

use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not BTF data (bad magic {0:#06x})")]
    Magic(u16),
    #[error("truncated BTF data")]
    Truncated,
    #[error("unsupported BTF type kind {0}")]
    Kind(u32),
}

const MAGIC: u16 = 0xeb9f;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Byte offset of the kind-specific data that follows the common header.
    extra: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// Where a struct member lives, in bits from the start of the outermost struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub bit_offset: u32,
    /// Width for bitfields; 0 for ordinary members.
    pub bit_size: u32,
    pub type_id: u32,
}

pub struct Btf {
    data: Vec<u8>,
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    str_start: usize,
    str_len: usize,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let u16_at = |o: usize| -> Result<u16, BtfError> {
            data.get(o..o + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(BtfError::Truncated)
        };
        let magic = u16_at(0)?;
        if magic != MAGIC {
            return Err(BtfError::Magic(magic));
        }
        let hdr_len = read_u32(&data, 4)? as usize;
        let type_off = read_u32(&data, 8)? as usize;
        let type_len = read_u32(&data, 12)? as usize;
        let str_off = read_u32(&data, 16)? as usize;
        let str_len = read_u32(&data, 20)? as usize;
        let type_start = hdr_len + type_off;
        let type_end = type_start + type_len;
        let str_start = hdr_len + str_off;
        if type_end > data.len() || str_start + str_len > data.len() {
            return Err(BtfError::Truncated);
        }
        let mut types = Vec::with_capacity(type_len / 16);
        types.push(Type {
            name_off: 0,
            info: 0,
            size_or_type: 0,
            extra: 0,
        });
        let mut pos = type_start;
        while pos < type_end {
            let t = Type {
                name_off: read_u32(&data, pos)?,
                info: read_u32(&data, pos + 4)?,
                size_or_type: read_u32(&data, pos + 8)?,
                extra: pos + 12,
            };
            let extra_len = match t.kind() {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * t.vlen(),
                kind::ENUM | kind::FUNC_PROTO => 8 * t.vlen(),
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                k => return Err(BtfError::Kind(k)),
            };
            pos = t.extra + extra_len;
            // Every later read of a type's extra data relies on this check.
            if pos > type_end {
                return Err(BtfError::Truncated);
            }
            types.push(t);
        }
        Ok(Self {
            data,
            types,
            str_start,
            str_len,
        })
    }

    fn name(&self, off: u32) -> &[u8] {
        let start = self.str_start + off as usize;
        let end = self.str_start + self.str_len;
        if start >= end {
            return b"";
        }
        let s = &self.data[start..end];
        let len = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        &s[..len]
    }

    fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.data[o..o + 4].try_into().expect("4 bytes"))
    }

    fn find(&self, name: &str, kinds: &[u32]) -> Option<u32> {
        let name = name.as_bytes();
        self.types
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, t)| kinds.contains(&t.kind()) && self.name(t.name_off) == name)
            .map(|(id, _)| id as u32)
    }

    /// The id of `struct NAME` (or union) with a body, skipping forward declarations.
    pub fn struct_id(&self, name: &str) -> Option<u32> {
        self.find(name, &[kind::STRUCT, kind::UNION])
    }

    /// How many parameters function `name` takes, from the FUNC_PROTO its FUNC points to;
    /// `None` when the BTF has no such function. An fexit program finds the return value in
    /// the slot after the last parameter, so this count is what its slot index must match.
    pub fn func_param_count(&self, name: &str) -> Option<usize> {
        let func = self.types.get(self.find(name, &[kind::FUNC])? as usize)?;
        let proto = self.types.get(func.size_or_type as usize)?;
        (proto.kind() == kind::FUNC_PROTO).then(|| proto.vlen())
    }

    /// Follows typedefs and qualifiers to the type that has a layout.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let Some(t) = self.types.get(id as usize) else {
                return id;
            };
            match t.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return id,
            }
        }
        id
    }

    /// Size in bytes of a type.
    pub fn size_of(&self, id: u32) -> Option<u32> {
        let id = self.resolve(id);
        let t = self.types.get(id as usize)?;
        match t.kind() {
            kind::INT | kind::STRUCT | kind::UNION | kind::ENUM | kind::ENUM64 | kind::FLOAT => {
                Some(t.size_or_type)
            }
            kind::PTR => Some(8),
            kind::ARRAY => {
                let elem = self.u32_at(t.extra);
                let n = self.u32_at(t.extra + 8);
                self.size_of(elem).map(|s| s * n)
            }
            _ => None,
        }
    }

    /// Finds `path` ("a.b.c") inside struct `id`, looking through anonymous struct and union
    /// members the way C does.
    pub fn member(&self, id: u32, path: &str) -> Option<Member> {
        let mut cur = Member {
            bit_offset: 0,
            bit_size: 0,
            type_id: id,
        };
        for part in path.split('.') {
            let m = self.direct_member(self.resolve(cur.type_id), part.as_bytes())?;
            cur = Member {
                bit_offset: cur.bit_offset + m.bit_offset,
                bit_size: m.bit_size,
                type_id: m.type_id,
            };
        }
        Some(cur)
    }

    fn direct_member(&self, id: u32, name: &[u8]) -> Option<Member> {
        let t = *self.types.get(id as usize)?;
        if t.kind() != kind::STRUCT && t.kind() != kind::UNION {
            return None;
        }
        for i in 0..t.vlen() {
            let o = t.extra + i * 12;
            let m_name = self.u32_at(o);
            let m_type = self.u32_at(o + 4);
            let m_off = self.u32_at(o + 8);
            let (bit_offset, bit_size) = if t.kind_flag() {
                (m_off & 0x00ff_ffff, m_off >> 24)
            } else {
                (m_off, self.int_bits_if_bitfield(m_type))
            };
            if m_name == 0 {
                if let Some(inner) = self.direct_member(self.resolve(m_type), name) {
                    return Some(Member {
                        bit_offset: bit_offset + inner.bit_offset,
                        ..inner
                    });
                }
            } else if self.name(m_name) == name {
                return Some(Member {
                    bit_offset,
                    bit_size,
                    type_id: m_type,
                });
            }
        }
        None
    }

    /// Old-style bitfields (kind_flag 0) carry their width in the INT type.
    fn int_bits_if_bitfield(&self, id: u32) -> u32 {
        let id = self.resolve(id);
        let Some(t) = self.types.get(id as usize) else {
            return 0;
        };
        if t.kind() != kind::INT {
            return 0;
        }
        let bits = self.u32_at(t.extra) & 0xff;
        if bits == t.size_or_type * 8 { 0 } else { bits }
    }

    /// A minimal BTF blob in which each of `funcs` (that exists here) is a FUNC with the same
    /// type id as in this BTF, and every other id is a placeholder `void *`.
    ///
    /// aya finds fexit and iterator targets by name in a parsed BTF and sends the kernel the
    /// type id. Parsing the whole vmlinux BTF costs aya several times the file's size in
    /// memory; parsing this stub costs little and yields the same ids (portwatch's peak RSS:
    /// BENCHMARKS.md).
    pub fn func_stub<S: AsRef<str>>(&self, funcs: &[S]) -> Vec<u8> {
        let found: Vec<(u32, &str)> = funcs
            .iter()
            .map(AsRef::as_ref)
            .filter_map(|f| Some((self.find(f, &[kind::FUNC])?, f)))
            .collect();
        let max_id = found.iter().map(|(id, _)| *id).max().unwrap_or(0);
        let mut strings = vec![0u8];
        let mut name_off = std::collections::HashMap::new();
        for (id, name) in &found {
            name_off.insert(*id, strings.len() as u32);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let mut types = Vec::with_capacity(max_id as usize * 12);
        for id in 1..=max_id {
            let (name, info) = match name_off.get(&id) {
                Some(off) => (*off, kind::FUNC << 24),
                None => (0, kind::PTR << 24),
            };
            for v in [name, info, 0] {
                types.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut out = Vec::with_capacity(24 + types.len() + strings.len());
        out.extend_from_slice(&(u32::from(MAGIC) | (1 << 16)).to_le_bytes());
        for v in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend(types);
        out.extend(strings);
        out
    }

    /// The value of an enumerator, searching every enum (names of enumerators are unique in C).
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        let name = name.as_bytes();
        for t in self.types.iter().skip(1) {
            match t.kind() {
                kind::ENUM => {
                    for i in 0..t.vlen() {
                        let o = t.extra + i * 8;
                        if self.name(self.u32_at(o)) == name {
                            return Some(i64::from(self.u32_at(o + 4) as i32));
                        }
                    }
                }
                kind::ENUM64 => {
                    for i in 0..t.vlen() {
                        let o = t.extra + i * 12;
                        if self.name(self.u32_at(o)) == name {
                            let lo = u64::from(self.u32_at(o + 4));
                            let hi = u64::from(self.u32_at(o + 8));
                            return Some(((hi << 32) | lo) as i64);
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }
}

fn read_u32(data: &[u8], o: usize) -> Result<u32, BtfError> {
    data.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes by hand: the layout of `struct s { int a; struct { char b:3, c:5; }; }`,
    /// `enum E { X = 11 }` and `int f(int x, char y)`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0char\0s\0a\0b\0c\0E\0X\0f\0x\0y\0".to_vec();
        let off = |s: &str| {
            let pat = format!("\0{s}\0");
            (strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut types = Vec::new();
        let mut push = |v: &[u32]| {
            for x in v {
                types.extend_from_slice(&x.to_le_bytes());
            }
        };
        // 1: int (4 bytes, 32 bits)
        push(&[off("int"), kind::INT << 24, 4, 32]);
        // 2: char (1 byte)
        push(&[off("char"), kind::INT << 24, 1, 8]);
        // 3: anonymous struct { char b:3; char c:5 } with kind_flag bitfields
        push(&[0, (1 << 31) | (kind::STRUCT << 24) | 2, 1]);
        push(&[off("b"), 2, 3 << 24]);
        push(&[off("c"), 2, (5 << 24) | 3]);
        // 4: struct s { int a; <anon 3> at byte 4 }
        push(&[off("s"), (kind::STRUCT << 24) | 2, 8]);
        push(&[off("a"), 1, 0]);
        push(&[0, 3, 32]);
        // 5: enum E { X = 11 }
        push(&[off("E"), (kind::ENUM << 24) | 1, 4]);
        push(&[off("X"), 11]);
        // 6: int (int x, char y)
        push(&[0, (kind::FUNC_PROTO << 24) | 2, 1]);
        push(&[off("x"), 1]);
        push(&[off("y"), 2]);
        // 7: f, of type 6
        push(&[off("f"), kind::FUNC << 24, 6]);
        let mut out = Vec::new();
        for v in [MAGIC as u32 | (1 << 16), 24, 0, types.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(types.len() as u32).to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn a_type_cut_short_is_an_error_not_a_panic() {
        let mut data = sample();
        // Shrink the type section by 4 bytes: its last type now runs past its end.
        let type_len = u32::from_le_bytes(data[12..16].try_into().unwrap());
        data[12..16].copy_from_slice(&(type_len - 4).to_le_bytes());
        assert!(matches!(Btf::parse(data), Err(BtfError::Truncated)));
    }

    #[test]
    fn finds_members_through_anonymous_structs_and_bitfields() {
        let btf = Btf::parse(sample()).unwrap();
        let s = btf.struct_id("s").unwrap();
        assert_eq!(btf.member(s, "a").unwrap().bit_offset, 0);
        let c = btf.member(s, "c").unwrap();
        assert_eq!((c.bit_offset, c.bit_size), (35, 5));
        assert!(btf.member(s, "nope").is_none());
        assert_eq!(btf.size_of(s), Some(8));
        assert_eq!(btf.enum_value("X"), Some(11));
    }

    #[test]
    fn a_stub_keeps_function_ids() {
        let btf = Btf::parse(sample()).unwrap();
        // No FUNC in the sample: an empty stub.
        let stub = Btf::parse(btf.func_stub(&["nope"])).unwrap();
        assert!(stub.find("nope", &[kind::FUNC]).is_none());
        // The real kernel's: every id kept.
        let vmlinux = Btf::from_file(Path::new(VMLINUX)).expect(
            "this kernel's BTF (/sys/kernel/btf/vmlinux): portwatch cannot run without it, and \
             every machine this project tests on has it",
        );
        let funcs = ["inet_bind", "bpf_iter_tcp"];
        let stub = Btf::parse(vmlinux.func_stub(&funcs)).unwrap();
        for f in funcs {
            assert_eq!(
                stub.find(f, &[kind::FUNC]),
                vmlinux.find(f, &[kind::FUNC]),
                "{f}"
            );
        }
    }

    #[test]
    fn counts_a_functions_parameters() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.func_param_count("f"), Some(2));
        // A name that is not a FUNC (an enumerator, a struct) has no count.
        assert_eq!(btf.func_param_count("X"), None);
        assert_eq!(btf.func_param_count("s"), None);
        let vmlinux = Btf::from_file(Path::new(VMLINUX)).expect(
            "this kernel's BTF (/sys/kernel/btf/vmlinux): portwatch cannot run without it, and \
             every machine this project tests on has it",
        );
        // inet_bind(sock, uaddr, addr_len) and inet_listen(sock, backlog) in every kernel
        // portwatch supports.
        assert_eq!(vmlinux.func_param_count("inet_bind"), Some(3));
        assert_eq!(vmlinux.func_param_count("inet_listen"), Some(2));
        assert_eq!(vmlinux.func_param_count("no_such_function_here"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(vec![0; 32]), Err(BtfError::Magic(0))));
        assert!(matches!(
            Btf::parse(vec![0x9f, 0xeb]),
            Err(BtfError::Truncated)
        ));
    }
}
