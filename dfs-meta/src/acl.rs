//! POSIX ACLs in their extended-attribute form (`system.posix_acl_access`,
//! `system.posix_acl_default`), kept in step with the mode bits.
//!
//! The kernel enforces ACLs (the client asks for FUSE_POSIX_ACL) but leaves
//! three things to the file system, done here inside the same transaction
//! as the change that causes them:
//! - setting an access ACL sets the mode's permission bits (the group bits
//!   become the mask), and an ACL that says no more than the mode is not
//!   stored at all;
//! - chmod rewrites the owner, mask (or group) and other entries of the
//!   access ACL;
//! - a new inode in a directory with a default ACL inherits it, masked by
//!   the mode asked for, instead of having the umask applied.
//!
//! The format (Linux `posix_acl_xattr`): a little-endian u32 version (2),
//! then 8-byte entries of tag (u16), permissions (u16) and id (u32).

use crate::error::{MetaError, Result};

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

pub const VERSION: u32 = 2;
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;
/// The id of entries that have none (owner, owning group, mask, other).
const UNDEFINED_ID: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    pub entries: Vec<Entry>,
}

fn invalid(what: &str) -> MetaError {
    MetaError::Invalid(format!("malformed POSIX ACL: {what}"))
}

impl Acl {
    /// Parses and validates an ACL as the kernel would (`posix_acl_valid`):
    /// one owner, owning-group and other entry, a mask when there are named
    /// entries, no duplicate names, permissions within rwx.
    pub fn parse(value: &[u8]) -> Result<Self> {
        let (header, body) = value
            .split_first_chunk::<4>()
            .ok_or_else(|| invalid("shorter than its header"))?;
        if u32::from_le_bytes(*header) != VERSION {
            return Err(invalid("unknown version"));
        }
        if body.len() % 8 != 0 {
            return Err(invalid("partial entry"));
        }
        let entries: Vec<Entry> = body
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let acl = Acl { entries };
        acl.validate()?;
        Ok(acl)
    }

    fn validate(&self) -> Result<()> {
        let count = |tag| self.entries.iter().filter(|e| e.tag == tag).count();
        if count(USER_OBJ) != 1 || count(GROUP_OBJ) != 1 || count(OTHER) != 1 {
            return Err(invalid("needs exactly one owner, group and other entry"));
        }
        if count(MASK) > 1 {
            return Err(invalid("more than one mask"));
        }
        let named = count(USER) + count(GROUP);
        if named > 0 && count(MASK) == 0 {
            return Err(invalid("named entries without a mask"));
        }
        for e in &self.entries {
            if e.perm & !7 != 0 {
                return Err(invalid("permissions beyond rwx"));
            }
            if ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag) {
                return Err(invalid("unknown entry tag"));
            }
        }
        let mut names: Vec<(u16, u32)> = self
            .entries
            .iter()
            .filter(|e| e.tag == USER || e.tag == GROUP)
            .map(|e| (e.tag, e.id))
            .collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("a user or group named twice"));
        }
        Ok(())
    }

    /// The xattr form, entries in the kernel's canonical order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        entries.sort_by_key(|e| (e.tag, e.id));
        let mut out = Vec::with_capacity(4 + 8 * entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in entries {
            let id = if e.tag == USER || e.tag == GROUP {
                e.id
            } else {
                UNDEFINED_ID
            };
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    fn entry_mut(&mut self, tag: u16) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.tag == tag)
    }

    fn perm(&self, tag: u16) -> u32 {
        self.entries
            .iter()
            .find(|e| e.tag == tag)
            .map_or(0, |e| u32::from(e.perm))
    }

    /// True when the ACL says no more than permission bits can.
    pub fn is_minimal(&self) -> bool {
        self.entries.len() == 3
    }

    /// The permission bits the ACL implies: owner, mask (or owning group),
    /// other.
    pub fn mode_bits(&self) -> u32 {
        let group = if self.entries.iter().any(|e| e.tag == MASK) {
            self.perm(MASK)
        } else {
            self.perm(GROUP_OBJ)
        };
        (self.perm(USER_OBJ) << 6) | (group << 3) | self.perm(OTHER)
    }

    /// Sets the owner, mask (or owning group) and other entries from the
    /// permission bits of `mode` (chmod, `posix_acl_chmod`).
    pub fn chmod(&mut self, mode: u32) {
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        if let Some(e) = self.entry_mut(USER_OBJ) {
            e.perm = bits(6);
        }
        let group_tag = if self.entries.iter().any(|e| e.tag == MASK) {
            MASK
        } else {
            GROUP_OBJ
        };
        if let Some(e) = self.entry_mut(group_tag) {
            e.perm = bits(3);
        }
        if let Some(e) = self.entry_mut(OTHER) {
            e.perm = bits(0);
        }
    }

    /// A new inode's access ACL from its directory's default ACL and the
    /// mode asked for (`posix_acl_create_masq`): each of owner, mask (or
    /// owning group) and other keeps only what the mode allows.
    pub fn masked_for_create(&self, mode: u32) -> Acl {
        let mut acl = self.clone();
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        let has_mask = acl.entries.iter().any(|e| e.tag == MASK);
        for e in &mut acl.entries {
            match e.tag {
                USER_OBJ => e.perm &= bits(6),
                MASK => e.perm &= bits(3),
                GROUP_OBJ if !has_mask => e.perm &= bits(3),
                OTHER => e.perm &= bits(0),
                _ => {}
            }
        }
        acl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_validates() {
        let a = acl(&[
            (USER_OBJ, 7, UNDEFINED_ID),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, UNDEFINED_ID),
            (MASK, 5, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]);
        let bytes = a.to_bytes();
        assert_eq!(bytes.len(), 4 + 5 * 8);
        let back = Acl::parse(&bytes).expect("parse");
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.mode_bits(), 0o750);
        assert!(!back.is_minimal());
        // Named entries need a mask; a header alone is not an ACL.
        let no_mask = acl(&[
            (USER_OBJ, 7, UNDEFINED_ID),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, UNDEFINED_ID),
            (OTHER, 0, UNDEFINED_ID),
        ]);
        assert!(Acl::parse(&no_mask.to_bytes()).is_err());
        assert!(Acl::parse(&2u32.to_le_bytes()).is_err());
        assert!(Acl::parse(b"\x01\x00\x00\x00").is_err());
    }

    #[test]
    fn chmod_moves_the_group_bits_to_the_mask() {
        let mut a = acl(&[
            (USER_OBJ, 7, UNDEFINED_ID),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, UNDEFINED_ID),
            (MASK, 7, UNDEFINED_ID),
            (OTHER, 7, UNDEFINED_ID),
        ]);
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), 0o640);
        assert_eq!(a.perm(GROUP_OBJ), 7, "the owning group entry is left alone");
        assert_eq!(
            a.perm(USER),
            7,
            "named entries are left alone (the mask limits them)"
        );
    }

    #[test]
    fn inheritance_masks_the_default_acl_with_the_mode() {
        let default = acl(&[
            (USER_OBJ, 7, UNDEFINED_ID),
            (GROUP_OBJ, 7, UNDEFINED_ID),
            (OTHER, 5, UNDEFINED_ID),
        ]);
        let created = default.masked_for_create(0o666);
        assert_eq!(created.mode_bits(), 0o664);
        assert!(created.is_minimal());
    }
}
