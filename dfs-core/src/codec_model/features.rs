//! The cheap features the codec model decides from: what kind of file a
//! chunk belongs to (its name and magic bytes), the byte entropy of a
//! sample and an LZ4 probe of the same sample.
//!
//! Computing them touches at most three 4 KiB samples of a chunk (for a
//! full-size chunk: start, middle and end, the same ones `codec::compress`'s
//! probe uses; fewer for smaller chunks), so they cost a fraction of
//! compressing the whole chunk with LZ4.

use serde::{Deserialize, Serialize};

/// Size of each sample slice.
pub const SAMPLE_SLICE: usize = 4096;

/// What kind of file a chunk belongs to, judged from its name and, for the
/// chunk that starts a file, its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Prose and source code: compresses well with anything.
    Text,
    /// Machine-readable text (JSON, XML, HTML, CSV, SQL, SVG, YAML):
    /// repetitive, so strong codecs gain more over LZ4 than on prose.
    Structured,
    /// Compiled code: ELF executables and libraries, object files and
    /// archives, bytecode.
    Executable,
    /// Already compressed: archives, compressed streams, images, audio,
    /// video, fonts in compressed containers.
    Compressed,
    /// Anything else (PDF, databases, message catalogs, unknown binary).
    Other,
}

impl FileKind {
    pub const ALL: [FileKind; 5] = [
        FileKind::Text,
        FileKind::Structured,
        FileKind::Executable,
        FileKind::Compressed,
        FileKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Text => "text",
            FileKind::Structured => "structured",
            FileKind::Executable => "executable",
            FileKind::Compressed => "compressed",
            FileKind::Other => "other",
        }
    }

    /// The kind of a file called `name` (a path or a file name; `None`
    /// when unknown) whose content starts with `first_bytes` (empty when
    /// the caller has not got the file's start at hand).
    ///
    /// Magic bytes win over the extension, the extension over well-known
    /// file names (`README`, `Makefile`), and those over a sniff of the
    /// first bytes (text when they hold no NUL and are almost all printable
    /// or UTF-8).
    pub fn of(name: Option<&str>, first_bytes: &[u8]) -> FileKind {
        if let Some(kind) = by_magic(first_bytes) {
            return kind;
        }
        let base = name.map(|n| n.rsplit('/').next().unwrap_or(n));
        if let Some(kind) = base.and_then(by_name) {
            return kind;
        }
        if looks_like_text(first_bytes) {
            FileKind::Text
        } else {
            FileKind::Other
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind announced by a file's first bytes, if they carry a known
/// signature.
fn by_magic(b: &[u8]) -> Option<FileKind> {
    const EXECUTABLE: &[&[u8]] = &[
        b"\x7fELF",
        b"!<arch>\n",
        b"\0asm",
        b"\xca\xfe\xba\xbe",
        b"\xfe\xed\xfa\xce",
        b"\xfe\xed\xfa\xcf",
        b"\xce\xfa\xed\xfe",
        b"\xcf\xfa\xed\xfe",
    ];
    const COMPRESSED: &[&[u8]] = &[
        b"\x1f\x8b",         // gzip
        b"\xfd7zXZ\0",       // xz
        b"\x28\xb5\x2f\xfd", // zstd
        b"BZh",              // bzip2
        b"\x04\x22\x4d\x18", // lz4 frame
        b"PK\x03\x04",       // zip, jar, docx, epub
        b"7z\xbc\xaf\x27\x1c",
        b"Rar!",
        b"\x89PNG",
        b"\xff\xd8\xff", // JPEG
        b"GIF8",
        b"OggS",
        b"fLaC",
        b"ID3",              // MP3
        b"\x1a\x45\xdf\xa3", // Matroska, WebM
        b"wOFF",
        b"wOF2",
        b"!<arch>\ndebian", // a .deb (before the ar rule below)
    ];
    const STRUCTURED: &[&[u8]] = &[
        b"<?xml",
        b"<svg",
        b"<!DOCTYPE html",
        b"<!doctype html",
        b"<html",
    ];
    // Longest match first where signatures share a prefix (`!<arch>`).
    if COMPRESSED.iter().any(|m| b.starts_with(m)) {
        return Some(FileKind::Compressed);
    }
    if EXECUTABLE.iter().any(|m| b.starts_with(m)) || (b.starts_with(b"MZ") && b.len() >= 64) {
        return Some(FileKind::Executable);
    }
    if b.len() >= 12 && &b[..4] == b"RIFF" && matches!(&b[8..12], b"WEBP" | b"AVI " | b"WAVE") {
        // WAVE is usually PCM, which does compress: leave it to the data.
        return Some(if &b[8..12] == b"WAVE" {
            FileKind::Other
        } else {
            FileKind::Compressed
        });
    }
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return Some(FileKind::Compressed); // MP4, MOV, HEIC, AVIF
    }
    if STRUCTURED.iter().any(|m| b.starts_with(m)) {
        return Some(FileKind::Structured);
    }
    if b.starts_with(b"#!") {
        return Some(FileKind::Text);
    }
    if b.starts_with(b"%PDF") || b.starts_with(b"SQLite format 3\0") {
        return Some(FileKind::Other);
    }
    None
}

/// The kind announced by a file name: its extension, else a well-known
/// name.
fn by_name(base: &str) -> Option<FileKind> {
    let lower = base.to_ascii_lowercase();
    // Versioned shared libraries: libfoo.so.1.2.3.
    if lower.contains(".so.") {
        return Some(FileKind::Executable);
    }
    if let Some((_, ext)) = lower.rsplit_once('.') {
        let kind = match ext {
            "txt" | "md" | "rst" | "adoc" | "tex" | "c" | "h" | "cc" | "cpp" | "cxx" | "hpp"
            | "hh" | "rs" | "py" | "pyi" | "go" | "java" | "kt" | "scala" | "js" | "mjs"
            | "cjs" | "ts" | "tsx" | "jsx" | "sh" | "bash" | "zsh" | "pl" | "pm" | "rb" | "lua"
            | "el" | "scm" | "lisp" | "hs" | "ml" | "mli" | "awk" | "sed" | "m4" | "am" | "ac"
            | "in" | "mk" | "cmake" | "ini" | "cfg" | "conf" | "log" | "diff" | "patch" | "css"
            | "scss" | "s" | "asm" | "f" | "f90" | "po" | "pot" | "vim" | "tcl" | "php"
            | "swift" | "m" | "mm" | "cs" | "d" | "zig" | "nim" | "proto" | "desktop"
            | "service" | "rules" | "changes" | "news" => FileKind::Text,
            "json" | "jsonl" | "ndjson" | "xml" | "html" | "htm" | "xhtml" | "csv" | "tsv"
            | "sql" | "svg" | "yaml" | "yml" | "toml" | "xsd" | "xsl" | "xslt" | "rdf"
            | "plist" | "glade" | "ui" | "kml" | "gpx" | "dtd" | "map" | "ipynb" => {
                FileKind::Structured
            }
            "so" | "o" | "a" | "ko" | "dll" | "exe" | "dylib" | "pyc" | "pyo" | "class"
            | "wasm" | "rlib" | "rmeta" | "node" | "elf" | "lib" | "obj" => FileKind::Executable,
            "gz" | "tgz" | "xz" | "txz" | "zst" | "zstd" | "bz2" | "tbz" | "tbz2" | "lz4"
            | "lzma" | "lz" | "7z" | "zip" | "jar" | "war" | "whl" | "apk" | "rar" | "deb"
            | "rpm" | "crate" | "png" | "jpg" | "jpeg" | "gif" | "webp" | "avif" | "heic"
            | "jxl" | "mp3" | "mp4" | "m4a" | "m4v" | "mkv" | "webm" | "ogg" | "oga" | "ogv"
            | "opus" | "flac" | "mov" | "woff" | "woff2" | "docx" | "xlsx" | "pptx" | "odt"
            | "ods" | "odp" | "epub" | "svgz" | "xpi" => FileKind::Compressed,
            "pdf" | "ttf" | "otf" | "mo" | "db" | "sqlite" | "iso" | "img" | "tar" | "bin"
            | "dat" | "pak" | "wav" | "bmp" | "tif" | "tiff" | "ico" => FileKind::Other,
            _ => return by_base_name(&lower),
        };
        return Some(kind);
    }
    by_base_name(&lower)
}

/// Text files usually named without an extension.
fn by_base_name(lower: &str) -> Option<FileKind> {
    const TEXT: &[&str] = &[
        "readme",
        "license",
        "licence",
        "copying",
        "copyright",
        "authors",
        "changelog",
        "news",
        "todo",
        "install",
        "makefile",
        "dockerfile",
        "thanks",
        "notice",
        "contributors",
        "maintainers",
        "cargo.lock",
    ];
    TEXT.iter()
        .any(|t| lower == *t || lower.starts_with(&format!("{t}.")))
        .then_some(FileKind::Text)
}

/// Whether `b` looks like text: no NUL, and at least 95% printable ASCII,
/// whitespace or bytes of UTF-8 sequences. Empty input is not text (there
/// is nothing to judge).
fn looks_like_text(b: &[u8]) -> bool {
    let b = &b[..b.len().min(1024)];
    if b.is_empty() || b.contains(&0) {
        return false;
    }
    let texty = b
        .iter()
        .filter(|&&c| matches!(c, 0x20..=0x7e | b'\t' | b'\n' | b'\r' | 0x0c | 0x80..))
        .count();
    texty * 100 >= b.len() * 95
}

/// What the model sees of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Features {
    /// Shannon entropy of the sample's bytes, in tenths of a bit per byte
    /// (0 to 80), rounded down.
    pub entropy_tenths: u8,
    /// The sample compressed with LZ4, as a percentage of its size,
    /// rounded up and capped at 100. Today's probe compresses a chunk when
    /// its own samples give at most 97 (the same samples for chunks of 48
    /// KiB and more; it reads all of a chunk up to 12 KiB, these fewer).
    pub lz4_percent: u8,
    /// The kind of file the chunk belongs to.
    pub kind: FileKind,
}

impl Features {
    /// Features of `raw`, a file's first chunk (or a chunk whose file is
    /// not known), named `name`: its kind comes from the name and from
    /// `raw`'s own first bytes. For a file's later chunks, compute the kind
    /// once from the first and call [`Features::with_kind`].
    pub fn of(name: Option<&str>, raw: &[u8]) -> Features {
        Features::with_kind(FileKind::of(name, raw), raw)
    }

    /// Features of a chunk `raw` of a file of `kind`.
    pub fn with_kind(kind: FileKind, raw: &[u8]) -> Features {
        let mut histogram = [0u32; 256];
        let mut sampled = 0usize;
        let mut packed = 0usize;
        for slice in samples(raw) {
            for &b in slice {
                histogram[usize::from(b)] += 1;
            }
            sampled += slice.len();
            packed += lz4_flex::block::compress(slice).len();
        }
        let lz4_percent = if sampled == 0 {
            100
        } else {
            (packed * 100).div_ceil(sampled).min(100)
        };
        Features {
            entropy_tenths: entropy_tenths(&histogram, sampled),
            lz4_percent: u8::try_from(lz4_percent).unwrap_or(100),
            kind,
        }
    }

    /// Entropy in bits per byte.
    pub fn entropy_bits(&self) -> f64 {
        f64::from(self.entropy_tenths) / 10.0
    }
}

/// The slices features are computed from: a chunk of up to 4 KiB whole,
/// else one 4 KiB slice per 16 KiB of chunk (at least one, at most three)
/// spread from its start to its end: start; start and end; start, middle
/// and end. Past 4 KiB that is at most a quarter of the chunk once it is
/// over 16 KiB, and 12 KiB of a 64 KiB one.
fn samples(raw: &[u8]) -> Vec<&[u8]> {
    if raw.len() <= SAMPLE_SLICE {
        return vec![raw];
    }
    let count = (raw.len() / (4 * SAMPLE_SLICE)).clamp(1, 3);
    let last = raw.len() - SAMPLE_SLICE;
    (0..count)
        .map(|i| {
            let at = if count == 1 {
                0
            } else {
                last * i / (count - 1)
            };
            &raw[at..at + SAMPLE_SLICE]
        })
        .collect()
}

/// Shannon entropy of a byte histogram over `total` bytes, in tenths of a
/// bit, rounded down.
fn entropy_tenths(histogram: &[u32; 256], total: usize) -> u8 {
    if total == 0 {
        return 0;
    }
    let n = total as f64;
    let bits: f64 = histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum();
    // A hair of slack so that exactly 8.0 (or 1.0) computed as
    // 7.999999 still lands on its tenth.
    ((bits * 10.0 + 1e-9).floor() as u8).min(80)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::xorshift::xorshift_bytes;

    #[test]
    fn magic_wins_over_the_extension() {
        assert_eq!(
            FileKind::of(Some("a.txt"), b"\x1f\x8b\x08\0"),
            FileKind::Compressed
        );
        assert_eq!(
            FileKind::of(Some("x.png"), b"\x7fELF\x02\x01"),
            FileKind::Executable
        );
        assert_eq!(
            FileKind::of(Some("ls"), b"\x7fELF\x02\x01"),
            FileKind::Executable
        );
        assert_eq!(
            FileKind::of(None, b"\x89PNG\r\n\x1a\n"),
            FileKind::Compressed
        );
        assert_eq!(FileKind::of(None, b"<?xml version"), FileKind::Structured);
        assert_eq!(FileKind::of(None, b"#!/bin/sh\n"), FileKind::Text);
        assert_eq!(
            FileKind::of(None, b"!<arch>\ndebian-binary"),
            FileKind::Compressed
        );
        assert_eq!(FileKind::of(None, b"!<arch>\n/  "), FileKind::Executable);
    }

    #[test]
    fn the_extension_decides_without_magic() {
        let mid_chunk = b"\x13\x99\x02\x55not a magic";
        assert_eq!(
            FileKind::of(Some("/usr/lib/libz.so.1.2.13"), mid_chunk),
            FileKind::Executable
        );
        assert_eq!(FileKind::of(Some("dir/a.JSON"), b""), FileKind::Structured);
        assert_eq!(FileKind::of(Some("main.rs"), b""), FileKind::Text);
        assert_eq!(
            FileKind::of(Some("ls.1.gz"), mid_chunk),
            FileKind::Compressed
        );
        assert_eq!(FileKind::of(Some("/x/README"), b""), FileKind::Text);
        assert_eq!(FileKind::of(Some("COPYING.GPL"), b""), FileKind::Text);
        assert_eq!(FileKind::of(Some("blob"), b"plain words\n"), FileKind::Text);
        assert_eq!(FileKind::of(Some("blob"), mid_chunk), FileKind::Other);
        assert_eq!(FileKind::of(None, b""), FileKind::Other);
    }

    #[test]
    fn features_of_text_and_noise() {
        let text = b"the quick brown fox jumps over the lazy dog\n".repeat(2000);
        let f = Features::of(Some("fox.txt"), &text);
        assert_eq!(f.kind, FileKind::Text);
        assert!(f.entropy_tenths < 50, "{f:?}");
        assert!(f.lz4_percent < 20, "{f:?}");
        let noise = xorshift_bytes(7, 100_000);
        let f = Features::of(None, &noise);
        assert!(f.entropy_tenths >= 79, "{f:?}");
        assert_eq!(f.lz4_percent, 100);
        let zeros = vec![0u8; 70_000];
        let f = Features::of(None, &zeros);
        assert_eq!(f.entropy_tenths, 0);
        assert!(f.lz4_percent <= 2, "{f:?}");
        let f = Features::of(None, &[]);
        assert_eq!((f.entropy_tenths, f.lz4_percent), (0, 100));
        // Two equally likely bytes: exactly one bit.
        let two: Vec<u8> = (0..10_000).map(|i| (i % 2) as u8).collect();
        assert_eq!(Features::of(None, &two).entropy_tenths, 10);
    }

    #[test]
    fn features_are_deterministic() {
        for (seed, len) in [(1, 10), (2, 5000), (3, 64 * 1024), (4, 128 * 1024)] {
            let mut raw = xorshift_bytes(seed, len);
            // Half noise, half structure.
            for b in raw.iter_mut().step_by(2) {
                *b &= 0x0f;
            }
            let a = Features::of(Some("x.bin"), &raw);
            let b = Features::of(Some("x.bin"), &raw.clone());
            assert_eq!(a, b);
        }
    }
}
