//! The hand-assembled XDP programs (the benchmarks' empty baseline, the generator's
//! live-frames program, the bench's fan-out): their instructions, and how they reach aya.
//!
//! Why hand-assembled: each is a few instructions whose constants (offsets, source count,
//! ifindex) are baked in per use; a second program in xdp-filter would need its build for
//! that and would change the filter's object.
//!
//! Why this module is written by hand and what it does not do: aya loads programs from ELF
//! objects only, so the instructions are wrapped in a minimal relocatable ELF object (built
//! with the `object` crate, which aya itself uses): one program section, a `license`, and
//! for a map a legacy `maps` entry with the relocation of its `ld_imm64`. From there aya does
//! everything that talks to the kernel: loading (with the verifier's log on refusal),
//! creating and relocating the map, attaching, BPF_PROG_TEST_RUN (live frames included) and
//! run statistics. Nothing here calls bpf(2), and no kernel struct is laid out by hand except
//! `bpf_map_def`, the stable ELF convention for legacy maps.

use anyhow::{bail, Context, Result};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use object::write::{Object, Relocation, Symbol, SymbolSection};
use object::{
    elf, Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags,
    SymbolKind, SymbolScope,
};

/// One eBPF instruction: opcode, dst/src registers, offset, immediate.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | (dst & 0x0f);
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// `BPF_LD | BPF_IMM | BPF_DW`: the two-slot load that a map relocation fills in.
const LD_IMM64: u8 = 0x18;

/// A map the program refers to from one `ld_imm64` (aya creates it and fills in its fd).
#[derive(Clone, Copy, Debug)]
pub struct MapRef {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// Index of the `ld_imm64` instruction that loads the map.
    pub insn: usize,
}

/// The ELF relocatable object aya loads: the program `name` in section `xdp`.
pub fn object_file(name: &str, insns: &[[u8; 8]], map: Option<&MapRef>) -> Result<Vec<u8>> {
    if insns.is_empty() {
        bail!("program {name} has no instructions");
    }
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
    let text = obj.add_section(Vec::new(), b"xdp".to_vec(), SectionKind::Text);
    let code = insns.concat();
    obj.append_section_data(text, &code, 8);
    obj.add_symbol(Symbol {
        name: name.as_bytes().to_vec(),
        value: 0,
        size: code.len() as u64,
        kind: SymbolKind::Text,
        scope: SymbolScope::Linkage,
        weak: false,
        section: SymbolSection::Section(text),
        flags: SymbolFlags::None,
    });
    let license = obj.add_section(Vec::new(), b"license".to_vec(), SectionKind::Data);
    obj.append_section_data(license, b"GPL\0", 1);
    if let Some(m) = map {
        if insns.get(m.insn).map(|i| i[0]) != Some(LD_IMM64) || m.insn + 1 >= insns.len() {
            bail!(
                "program {name}: instruction {} is not an ld_imm64 for map {}",
                m.insn,
                m.name
            );
        }
        let maps = obj.add_section(Vec::new(), b"maps".to_vec(), SectionKind::Data);
        // struct bpf_map_def: type, key_size, value_size, max_entries, map_flags, id, pinning.
        let def: Vec<u8> = [m.map_type, m.key_size, m.value_size, m.max_entries, 0, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let at = obj.append_section_data(maps, &def, 4);
        let symbol = obj.add_symbol(Symbol {
            name: m.name.as_bytes().to_vec(),
            value: at,
            size: def.len() as u64,
            kind: SymbolKind::Data,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(maps),
            flags: SymbolFlags::None,
        });
        obj.add_relocation(
            text,
            Relocation {
                offset: (m.insn * 8) as u64,
                symbol,
                addend: 0,
                flags: RelocationFlags::Elf {
                    r_type: elf::R_BPF_64_64,
                },
            },
        )
        .with_context(|| format!("relocating map {} in {name}", m.name))?;
    }
    obj.write()
        .with_context(|| format!("writing the object of {name}"))
}

/// A hand-assembled XDP program loaded by aya (and its map, if any). The kernel unloads it,
/// and detaches its links, when this value is dropped.
pub struct HandXdp {
    ebpf: Ebpf,
    name: String,
}

impl HandXdp {
    /// Builds the object and loads the program (the verifier's log is part of the error).
    pub fn load(name: &str, insns: &[[u8; 8]], map: Option<&MapRef>) -> Result<HandXdp> {
        let object = object_file(name, insns, map)?;
        // No BTF: the programs have no CO-RE relocations, and parsing the kernel's costs time.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(&object)
            .with_context(|| format!("loading the object of {name}"))?;
        let p: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in its object"))?
            .try_into()?;
        p.load()
            .with_context(|| format!("the kernel refused program {name}"))?;
        Ok(HandXdp {
            ebpf,
            name: name.to_string(),
        })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(&self.name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded as an XDP program in HandXdp::load")
    }

    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(&self.name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded as an XDP program in HandXdp::load")
    }

    pub fn map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }
}

/// Loads `r0 = action; exit`: the cheapest possible XDP program (2 = XDP_PASS, 1 = XDP_DROP).
pub fn empty(action: u32) -> Result<HandXdp> {
    HandXdp::load(
        "dots_empty",
        &[
            insn(0xb7, 0, 0, 0, action as i32), // BPF_ALU64 | BPF_MOV | BPF_K: r0 = action
            insn(0x95, 0, 0, 0, 0),             // BPF_JMP | BPF_EXIT
        ],
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_name_their_program_and_refuse_a_bad_map_reference() {
        let exit = [insn(0xb7, 0, 0, 0, 2), insn(0x95, 0, 0, 0, 0)];
        let o = object_file("p", &exit, None).unwrap();
        assert_eq!(&o[..4], b"\x7fELF");
        assert!(o.windows(4).any(|w| w == b"GPL\0"));
        let map = MapRef {
            name: "m",
            map_type: 2,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            insn: 0,
        };
        let e = object_file("p", &exit, Some(&map)).unwrap_err();
        assert!(format!("{e:#}").contains("not an ld_imm64"), "{e:#}");
        assert!(object_file("p", &[], None).is_err());
    }
}
