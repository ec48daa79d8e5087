//! Resolves [`KernelLayout`] (every kernel struct field the programs read) from the running
//! kernel's BTF.
//!
//! This is what lets one binary run on 6.1 and on 6.18: in 6.1 `inet_sock` keeps `freebind`,
//! `transparent` and `bind_address_no_port` as bitfields; from 6.6 they are bits of
//! `inet_flags`, numbered by the `INET_FLAGS_*` enum. Both come out as the same [`Field`] shape.

use portwatch_common::{Field, KernelLayout};
use thiserror::Error;

use crate::btf::{Btf, Member};

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error("the kernel's BTF has no struct {0}")]
    Struct(&'static str),
    #[error("the kernel's BTF has no field {0}.{1}")]
    Member(&'static str, &'static str),
    #[error("{0}.{1} has an unexpected size ({2} bytes)")]
    Size(&'static str, &'static str, u32),
    #[error("this kernel has neither inet_sock.{0} nor the inet_flags bit {1}")]
    InetFlag(&'static str, &'static str),
}

struct Resolver<'a> {
    btf: &'a Btf,
}

impl Resolver<'_> {
    fn member(&self, st: &'static str, path: &'static str) -> Result<Option<Member>, LayoutError> {
        let id = self.btf.struct_id(st).ok_or(LayoutError::Struct(st))?;
        Ok(self.btf.member(id, path))
    }

    /// A field that must exist.
    fn field(&self, st: &'static str, path: &'static str) -> Result<Field, LayoutError> {
        self.optional(st, path)?
            .ok_or(LayoutError::Member(st, path))
    }

    /// A field the kernel may lack (IPv6 addresses without CONFIG_IPV6, say): size 0 then.
    fn optional(&self, st: &'static str, path: &'static str) -> Result<Option<Field>, LayoutError> {
        let Some(m) = self.member(st, path)? else {
            return Ok(None);
        };
        if m.bit_size != 0 {
            return Ok(Some(bitfield(m.bit_offset, m.bit_size)));
        }
        let size = self.btf.size_of(m.type_id).unwrap_or(0);
        if !matches!(size, 1 | 2 | 4 | 8 | 16) {
            return Err(LayoutError::Size(st, path, size));
        }
        Ok(Some(Field::plain(m.bit_offset / 8, size as u8)))
    }

    /// The size of a struct, carried in a [`Field`]'s `offset` (for array strides).
    fn size(&self, st: &'static str) -> Result<Field, LayoutError> {
        let id = self.btf.struct_id(st).ok_or(LayoutError::Struct(st))?;
        let size = self.btf.size_of(id).ok_or(LayoutError::Struct(st))?;
        Ok(Field::plain(size, 0))
    }

    /// A struct embedded in another: only its offset counts (size reads as 8).
    fn embedded(&self, st: &'static str, path: &'static str) -> Result<Field, LayoutError> {
        let m = self
            .member(st, path)?
            .ok_or(LayoutError::Member(st, path))?;
        Ok(Field::plain(m.bit_offset / 8, 8))
    }

    /// `inet_sock.NAME` as a bitfield (before 6.6), or bit `INET_FLAGS_X` of `inet_flags`.
    fn inet_flag(&self, bitfield: &'static str, flag: &'static str) -> Result<Field, LayoutError> {
        if let Some(f) = self.optional("inet_sock", bitfield)? {
            return Ok(f);
        }
        let word = self.optional("inet_sock", "inet_flags")?;
        match (word, self.btf.enum_value(flag)) {
            (Some(word), Some(bit)) if (0..64).contains(&bit) => Ok(Field {
                offset: word.offset,
                size: word.size,
                shift: bit as u8,
                bits: 1,
                _pad: 0,
            }),
            _ => Err(LayoutError::InetFlag(bitfield, flag)),
        }
    }
}

/// The smallest little-endian read that covers the bitfield.
fn bitfield(bit_offset: u32, bit_size: u32) -> Field {
    let shift = bit_offset % 8;
    let bits_needed = shift + bit_size;
    let size = match bits_needed {
        0..=8 => 1,
        9..=16 => 2,
        17..=32 => 4,
        _ => 8,
    };
    Field {
        offset: bit_offset / 8,
        size,
        shift: shift as u8,
        bits: bit_size as u8,
        _pad: 0,
    }
}

pub fn resolve(btf: &Btf) -> Result<KernelLayout, LayoutError> {
    let r = Resolver { btf };
    Ok(KernelLayout {
        task_files: r.field("task_struct", "files")?,
        files_fdt: r.field("files_struct", "fdt")?,
        fdt_max_fds: r.field("fdtable", "max_fds")?,
        fdt_fd: r.field("fdtable", "fd")?,
        file_private_data: r.field("file", "private_data")?,
        inode_ino: r.field("inode", "i_ino")?,
        socket_sk: r.field("socket", "sk")?,
        socket_inode: r.embedded("socket_alloc", "vfs_inode")?,
        sk_family: r.field("sock_common", "skc_family")?,
        sk_state: r.field("sock_common", "skc_state")?,
        sk_reuse: r.field("sock_common", "skc_reuse")?,
        sk_reuseport: r.field("sock_common", "skc_reuseport")?,
        sk_ipv6only: r.field("sock_common", "skc_ipv6only")?,
        sk_bound_dev_if: r.field("sock_common", "skc_bound_dev_if")?,
        sk_num: r.field("sock_common", "skc_num")?,
        sk_rcv_saddr: r.field("sock_common", "skc_rcv_saddr")?,
        sk_v6_rcv_saddr: r
            .optional("sock_common", "skc_v6_rcv_saddr")?
            .unwrap_or_default(),
        sk_daddr: r.field("sock_common", "skc_daddr")?,
        sk_v6_daddr: r
            .optional("sock_common", "skc_v6_daddr")?
            .unwrap_or_default(),
        sk_dport: r.field("sock_common", "skc_dport")?,
        sk_net: r.field("sock_common", "skc_net")?,
        net_inum: r.field("net", "ns.inum")?,
        sk_socket: r.field("sock", "sk_socket")?,
        sk_protocol: r.field("sock", "sk_protocol")?,
        sk_type: r.field("sock", "sk_type")?,
        sk_uid: r.field("sock", "sk_uid")?,
        inet_freebind: r.inet_flag("freebind", "INET_FLAGS_FREEBIND")?,
        inet_transparent: r.inet_flag("transparent", "INET_FLAGS_TRANSPARENT")?,
        inet_bind_address_no_port: r
            .inet_flag("bind_address_no_port", "INET_FLAGS_BIND_ADDRESS_NO_PORT")?,
        tw_timer_expires: r.field("inet_timewait_sock", "tw_timer.expires")?,
        tw_substate: r.field("inet_timewait_sock", "tw_substate")?,
        regs_di: r.field("pt_regs", "di")?,
        regs_si: r.field("pt_regs", "si")?,
        regs_dx: r.field("pt_regs", "dx")?,
        regs_orig_ax: r.field("pt_regs", "orig_ax")?,
        socket_file: r.field("socket", "file")?,
        file_inode: r.field("file", "f_inode")?,
        inode_mode: r.field("inode", "i_mode")?,
        task_tgid: r.field("task_struct", "tgid")?,
        task_comm: r.field("task_struct", "comm")?,
        task_pid: r.field("task_struct", "pid")?,
        sk_bind_node: r.embedded("sock_common", "skc_bind_node")?,
        sk_node: r.embedded("sock_common", "skc_node")?,
        sk_prot: r.field("sock_common", "skc_prot")?,
        net_hash_mix: r.field("net", "hash_mix")?,
        net_tcp_hashinfo: r.field("net", "ipv4.tcp_death_row.hashinfo")?,
        net_udp_table: r.optional("net", "ipv4.udp_table")?.unwrap_or_default(),
        proto_udp_table: r.field("proto", "h.udp_table")?,
        hashinfo_bhash: r.field("inet_hashinfo", "bhash")?,
        hashinfo_bhash_size: r.field("inet_hashinfo", "bhash_size")?,
        bhash_bucket_size: r.size("inet_bind_hashbucket")?,
        bhash_bucket_chain: r.field("inet_bind_hashbucket", "chain.first")?,
        tb_net: r.field("inet_bind_bucket", "ib_net.net")?,
        tb_port: r.field("inet_bind_bucket", "port")?,
        tb_node: r.embedded("inet_bind_bucket", "node")?,
        tb_owners: match r.optional("inet_bind_bucket", "owners.first")? {
            Some(f) => f,
            None => r.field("inet_bind_bucket", "bhash2.first")?,
        },
        // Only read where sockets hang off bind2 buckets (6.8+); 6.1's have no `bhash_node`.
        tb2_bhash_node: r
            .optional("inet_bind2_bucket", "bhash_node.next")?
            .unwrap_or_default(),
        tb2_owners: r
            .optional("inet_bind2_bucket", "owners.first")?
            .unwrap_or_default(),
        // Sockets hang off the bind2 buckets once the bind bucket has no `owners` (6.8+).
        tb_has_bhash2: Field::plain(
            u32::from(r.optional("inet_bind_bucket", "owners")?.is_none()),
            0,
        ),
        icsk_bind_hash: r.field("inet_connection_sock", "icsk_bind_hash")?,
        icsk_bind2_hash: r
            .optional("inet_connection_sock", "icsk_bind2_hash")?
            .unwrap_or_default(),
        udp_table_hash: r.field("udp_table", "hash")?,
        udp_table_mask: r.field("udp_table", "mask")?,
        udp_hslot_size: r.size("udp_hslot")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfields_read_the_fewest_bytes() {
        // skc_reuse:4 right after an 8-bit skc_state at byte 18 → bit 152.
        assert_eq!(
            bitfield(152, 4),
            Field {
                offset: 19,
                size: 1,
                shift: 0,
                bits: 4,
                _pad: 0
            }
        );
        // a 1-bit flag at bit 7 of its byte
        assert_eq!(
            bitfield(15, 1),
            Field {
                offset: 1,
                size: 1,
                shift: 7,
                bits: 1,
                _pad: 0
            }
        );
        // crossing a byte boundary
        assert_eq!(
            bitfield(6, 4),
            Field {
                offset: 0,
                size: 2,
                shift: 6,
                bits: 4,
                _pad: 0
            }
        );
    }
}
