//! Every call chain of the kernel programs fits Linux 6.1's stack limit, checked on the object
//! itself, in a unit test.
//!
//! Why here: 6.1 adds up the frames of a whole call chain (program → BPF function → ...),
//! each rounded up to 32 bytes, and refuses the program when the sum passes 512 ("combined
//! stack size of N calls is 544. Too large"). Later kernels round less. portwatch's chains sit
//! right at the limit, and eight bytes more in one frame are enough to break every bind
//! program on 6.1, which otherwise shows only minutes into the 6.1 VM stage. This reads the
//! frames from the instructions, as the verifier does: a frame is as deep as the lowest stack
//! slot its instructions touch.

use std::collections::HashMap;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SectionKind};

use super::EBPF_OBJECT;

/// 6.1's `MAX_BPF_STACK`, and the rounding `check_max_stack_depth` applies to each frame.
const LIMIT: u64 = 512;
const ROUND: u64 = 32;

/// A function of the object: its section, where it starts and ends (bytes), and its frame.
struct Function {
    name: String,
    section: object::SectionIndex,
    section_name: String,
    start: u64,
    end: u64,
    frame: u64,
    /// The functions it calls, or hands to a helper as a callback (`bpf_loop`).
    calls: Vec<usize>,
}

/// One BPF instruction's fields.
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

fn insn(bytes: &[u8]) -> Insn {
    Insn {
        code: bytes[0],
        dst: bytes[1] & 0xf,
        src: bytes[1] >> 4,
        off: i16::from_le_bytes([bytes[2], bytes[3]]),
        imm: i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    }
}

const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const MOV64_REG: u8 = 0xbf;
const ADD64_IMM: u8 = 0x07;
const PSEUDO_CALL: u8 = 1;
const PSEUDO_FUNC: u8 = 4;

/// How deep below r10 the instructions in `code` reach: through r10 itself, or through a
/// register set from r10 and moved by constants (how a stack buffer's address is passed).
/// A straight scan, not a walk of the control flow: the compiler puts `rX = r10; rX += -N`
/// next to each other.
fn frame_of(code: &[u8]) -> u64 {
    let mut from_r10: [Option<i64>; 11] = [None; 11];
    from_r10[10] = Some(0);
    let mut deepest = 0i64;
    let mut i = 0;
    while i + 8 <= code.len() {
        let n = insn(&code[i..i + 8]);
        let class = n.code & 7;
        let mut touch = |base: u8| {
            if let Some(at) = from_r10.get(usize::from(base)).copied().flatten() {
                deepest = deepest.max(-(at + i64::from(n.off)));
            }
        };
        match class {
            // LDX reads through src; ST and STX write through dst.
            1 => touch(n.src),
            2 | 3 => touch(n.dst),
            _ => {}
        }
        let dst = usize::from(n.dst).min(10);
        if n.code == MOV64_REG && n.src == 10 {
            from_r10[dst] = Some(0);
        } else if n.code == ADD64_IMM && dst != 10 && from_r10[dst].is_some() {
            from_r10[dst] = from_r10[dst].map(|at| at + i64::from(n.imm));
            deepest = deepest.max(-from_r10[dst].unwrap_or(0));
        } else if n.code == CALL {
            // r0-r5 do not survive a call.
            from_r10[..6].fill(None);
        } else if matches!(class, 0 | 1 | 4 | 7) && dst != 10 {
            // Any other load or ALU result in dst.
            from_r10[dst] = None;
        }
        i += if n.code == LD_IMM64 { 16 } else { 8 };
    }
    deepest.max(0) as u64
}

/// The object's functions, with their frames and the calls between them.
fn functions() -> Vec<Function> {
    let obj = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
    let mut functions: Vec<Function> = obj
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let section = s.section_index()?;
            let code = obj.section_by_index(section).ok()?;
            let data = code.data().ok()?;
            let (start, end) = (s.address(), s.address() + s.size());
            Some(Function {
                name: s.name().ok()?.to_string(),
                section,
                section_name: code.name().ok()?.to_string(),
                start,
                end,
                frame: frame_of(&data[start as usize..end as usize]),
                calls: Vec::new(),
            })
        })
        .collect();
    let at: HashMap<(object::SectionIndex, u64), usize> = functions
        .iter()
        .enumerate()
        .map(|(i, f)| ((f.section, f.start), i))
        .collect();
    for section in obj.sections() {
        if section.kind() != SectionKind::Text {
            continue;
        }
        let data = section.data().expect("a code section's bytes");
        let relocated: HashMap<u64, RelocationTarget> = section
            .relocations()
            .map(|(offset, r)| (offset, r.target()))
            .collect();
        let mut i = 0u64;
        while (i as usize) + 8 <= data.len() {
            let n = insn(&data[i as usize..i as usize + 8]);
            // A callback's address is an ld_imm64 relocated against code (the object leaves
            // its src_reg 0; the loader makes it PSEUDO_FUNC).
            let callback = n.code == LD_IMM64
                && (n.src == PSEUDO_FUNC
                    || matches!(relocated.get(&i), Some(RelocationTarget::Symbol(sym))
                        if obj.symbol_by_index(*sym).ok().and_then(|s| s.section_index())
                            .and_then(|x| obj.section_by_index(x).ok())
                            .is_some_and(|x| x.kind() == SectionKind::Text)));
            let call = n.code == CALL && n.src == PSEUDO_CALL;
            let callee = (call || callback).then(|| {
                // Against a function's symbol: that function. Against a section's: a call's
                // imm counts instructions after the next one, a callback's counts bytes.
                let target = match relocated.get(&i) {
                    Some(RelocationTarget::Symbol(sym)) => {
                        let sym = obj.symbol_by_index(*sym).expect("a relocation's symbol");
                        let section = sym.section_index().expect("a defined target");
                        let offset = if sym.kind() == object::SymbolKind::Section {
                            if call {
                                (i64::from(n.imm) + 1) as u64 * 8
                            } else {
                                n.imm as u64
                            }
                        } else {
                            sym.address()
                        };
                        (section, offset)
                    }
                    _ => (
                        section.index(),
                        (i as i64 + (i64::from(n.imm) + 1) * 8) as u64,
                    ),
                };
                *at.get(&target).unwrap_or_else(|| {
                    panic!(
                        "a call at {i:#x} of {:?} to no function start",
                        section.name()
                    )
                })
            });
            if let Some(callee) = callee {
                let caller = functions
                    .iter()
                    .position(|f| f.section == section.index() && f.start <= i && i < f.end)
                    .expect("every call is inside a function");
                functions[caller].calls.push(callee);
            }
            i += if n.code == LD_IMM64 { 16 } else { 8 };
        }
    }
    functions
}

/// The deepest chain from function `f`: its rounded stack size and the chain, as "name (frame)".
fn deepest(functions: &[Function], f: usize, seen: &mut Vec<usize>) -> (u64, Vec<String>) {
    let own = functions[f].frame.max(1).div_ceil(ROUND) * ROUND;
    let label = format!("{} ({} bytes)", functions[f].name, functions[f].frame);
    seen.push(f);
    let mut best = (0, Vec::new());
    for &c in &functions[f].calls {
        assert!(
            !seen.contains(&c),
            "recursion through {}",
            functions[c].name
        );
        let below = deepest(functions, c, seen);
        if below.0 > best.0 {
            best = below;
        }
    }
    seen.pop();
    let mut chain = vec![label];
    chain.extend(best.1);
    (own + best.0, chain)
}

/// Every program's deepest call chain stays within 6.1's 512 bytes, each frame rounded up
/// to 32.
#[test]
fn every_call_chain_fits_linux_6_1s_stack_limit() {
    let functions = functions();
    // Programs are the functions of the programs' own sections; .text holds what they call.
    let programs: Vec<usize> = (0..functions.len())
        .filter(|&i| functions[i].section_name != ".text")
        .collect();
    assert!(
        programs.len() >= 10,
        "found only {} programs in the object",
        programs.len()
    );
    for p in programs {
        let (total, chain) = deepest(&functions, p, &mut Vec::new());
        assert!(
            total <= LIMIT,
            "{}'s deepest call chain needs {total} bytes of stack on Linux 6.1 (each frame \
             rounded up to {ROUND}, {LIMIT} at most): {}",
            functions[p].name,
            chain.join(" → ")
        );
    }
}

/// The frames read here are the verifier's: the send chain of the bind program was measured
/// at its limit on 6.1 (a frame eight bytes larger was refused as 544), and a frame is never
/// read as empty when the code uses the stack.
#[test]
fn frames_are_read_from_the_stack_slots_touched() {
    // r1 = r10; r1 += -0x48; *(u64 *)(r10 - 0x10) = r2; exit
    let code = [
        [0xbf, 0xa1, 0, 0, 0, 0, 0, 0],
        [0x07, 0x01, 0, 0, 0xb8, 0xff, 0xff, 0xff],
        [0x7b, 0x2a, 0xf0, 0xff, 0, 0, 0, 0],
        [0x95, 0, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(frame_of(&code), 0x48);
    let functions = functions();
    let bind = functions
        .iter()
        .find(|f| f.name == portwatch_common::programs::SYS_EXIT_BIND)
        .expect("sys_exit_bind is in the object");
    assert!(
        bind.frame >= 64,
        "sys_exit_bind's frame read as {}",
        bind.frame
    );
}
