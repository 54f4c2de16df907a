//! RIFF/WAVE files: reading what users upload and what we ship, writing recordings.
//!
//! Read: `RIFF` / `WAVE` with a `fmt ` chunk and a `data` chunk, other chunks (`LIST`, `fact`,
//! `cue `...) skipped; 8 kHz mono in 16-bit linear PCM, G.711 A-law or µ-law (also as
//! `WAVE_FORMAT_EXTENSIBLE`). Everything is checked against the bytes actually present, so a
//! truncated or lying header is a [`WavError`] naming what is wrong and, where it helps, the
//! `sox` command that converts the file. Nothing here panics on any input.
//!
//! Write: 8 kHz mono 16-bit PCM, either in one go ([`encode`]) or streamed to a file
//! ([`WavWriter`]) whose header sizes are patched at the end; a file cut short by a crash is
//! fixed by [`repair`].

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use crate::g711::Law;

/// The only sample rate we play and record (G.711).
pub const SAMPLE_RATE: u32 = 8000;
/// Size of the header [`encode`] and [`WavWriter`] write.
pub const HEADER_LEN: usize = 44;

const FORMAT_PCM: u16 = 1;
const FORMAT_ALAW: u16 = 6;
const FORMAT_MULAW: u16 = 7;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// How to convert a file into something we accept.
const CONVERT: &str = "convert it with `sox IN.wav -r 8000 -c 1 -b 16 -e signed-integer OUT.wav`";

/// Why a WAV file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    /// Does not start with `RIFF....WAVE`.
    #[error("not a WAV file: it does not start with a RIFF/WAVE header")]
    NotWav,
    /// A chunk header or body runs past the end of the file.
    #[error("truncated WAV file: chunk `{0}` runs past the end of the file")]
    Truncated(String),
    /// No `fmt ` chunk before the `data` chunk.
    #[error("malformed WAV file: no `fmt ` chunk before the `data` chunk")]
    NoFormat,
    /// No `data` chunk.
    #[error("malformed WAV file: no `data` chunk")]
    NoData,
    /// `fmt ` chunk shorter than 16 bytes or inconsistent.
    #[error("malformed WAV file: {0}")]
    BadFormat(String),
    /// A sample encoding we do not play.
    #[error("unsupported WAV encoding {0}: use 16-bit PCM, A-law or µ-law; {CONVERT}")]
    Encoding(String),
    /// Not 8000 Hz.
    #[error("unsupported sample rate {0} Hz: telephone audio is 8000 Hz; {CONVERT}")]
    Rate(u32),
    /// Not mono.
    #[error("unsupported channel count {0}: use mono; {CONVERT}")]
    Channels(u16),
    /// Longer than allowed.
    #[error("too long: {:.1} s of audio, at most {max_secs} s are accepted", *samples as f64 / SAMPLE_RATE as f64)]
    TooLong {
        /// Length of the file's audio in samples.
        samples: usize,
        /// The limit.
        max_secs: u32,
    },
    /// No samples.
    #[error("the WAV file holds no audio")]
    Empty,
}

/// Reads a WAV file into 8 kHz linear samples. `max_secs` bounds the audio accepted (and so
/// the memory used).
pub fn decode(bytes: &[u8], max_secs: u32) -> Result<Vec<i16>, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    // The RIFF size may be wrong (streamed files); we go by the chunks actually present.
    let mut at = 12usize;
    let mut format: Option<(Encoding, u16)> = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
            as usize;
        let body_start = at + 8;
        let name = String::from_utf8_lossy(id).escape_debug().to_string();
        if id == b"data" {
            let (encoding, block) = format.ok_or(WavError::NoFormat)?;
            // A streamed file whose header was never patched says 0 or 0xFFFFFFFF: take the rest.
            let end = if size == 0 || size == u32::MAX as usize {
                bytes.len()
            } else {
                body_start
                    .checked_add(size)
                    .filter(|e| *e <= bytes.len())
                    .ok_or(WavError::Truncated(name))?
            };
            let data = &bytes[body_start..end];
            let frames = data.len() / block as usize;
            if frames == 0 {
                return Err(WavError::Empty);
            }
            let limit = max_secs as usize * SAMPLE_RATE as usize;
            if frames > limit {
                return Err(WavError::TooLong {
                    samples: frames,
                    max_secs,
                });
            }
            let mut out = vec![0i16; frames];
            match encoding {
                Encoding::Pcm16 => {
                    for (o, c) in out.iter_mut().zip(data.chunks_exact(2)) {
                        *o = i16::from_le_bytes([c[0], c[1]]);
                    }
                }
                Encoding::G711(law) => law.decode(&data[..frames], &mut out),
            }
            return Ok(out);
        }
        let end = body_start
            .checked_add(size)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| WavError::Truncated(name.clone()))?;
        if id == b"fmt " {
            format = Some(parse_fmt(&bytes[body_start..end])?);
        }
        // Chunks are padded to an even length.
        at = end + (size & 1);
    }
    if format.is_none() {
        return Err(WavError::NoFormat);
    }
    Err(WavError::NoData)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Pcm16,
    G711(Law),
}

/// Returns the encoding and the block size (bytes per sample frame).
fn parse_fmt(f: &[u8]) -> Result<(Encoding, u16), WavError> {
    if f.len() < 16 {
        return Err(WavError::BadFormat(format!(
            "`fmt ` chunk is {} bytes, at least 16 are needed",
            f.len()
        )));
    }
    let u16_at = |i: usize| u16::from_le_bytes([f[i], f[i + 1]]);
    let mut tag = u16_at(0);
    let channels = u16_at(2);
    let rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
    let block = u16_at(12);
    let bits = u16_at(14);
    if tag == FORMAT_EXTENSIBLE {
        // cbSize(2) validBits(2) channelMask(4) then the sub-format GUID, whose first two
        // bytes are the format tag.
        if f.len() < 40 {
            return Err(WavError::BadFormat(
                "WAVE_FORMAT_EXTENSIBLE `fmt ` chunk shorter than 40 bytes".into(),
            ));
        }
        tag = u16_at(24);
    }
    if channels != 1 {
        return Err(WavError::Channels(channels));
    }
    let encoding = match (tag, bits) {
        (FORMAT_PCM, 16) => Encoding::Pcm16,
        (FORMAT_ALAW, 8) => Encoding::G711(Law::Alaw),
        (FORMAT_MULAW, 8) => Encoding::G711(Law::Ulaw),
        (FORMAT_PCM, b) => return Err(WavError::Encoding(format!("{b}-bit PCM"))),
        (t, b) => return Err(WavError::Encoding(format!("format {t:#06x} ({b} bits)"))),
    };
    if rate != SAMPLE_RATE {
        return Err(WavError::Rate(rate));
    }
    let want_block = if encoding == Encoding::Pcm16 { 2 } else { 1 };
    if block != want_block {
        return Err(WavError::BadFormat(format!(
            "block align {block} does not match the encoding (expected {want_block})"
        )));
    }
    Ok((encoding, block))
}

fn header(data_len: u32, law: Option<Law>) -> [u8; HEADER_LEN] {
    let (tag, bits, block) = match law {
        None => (FORMAT_PCM, 16u16, 2u16),
        Some(Law::Alaw) => (FORMAT_ALAW, 8, 1),
        Some(Law::Ulaw) => (FORMAT_MULAW, 8, 1),
    };
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&tag.to_le_bytes());
    h[22..24].copy_from_slice(&1u16.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&(SAMPLE_RATE * block as u32).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&bits.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// A complete 8 kHz mono 16-bit PCM WAV file.
pub fn encode(samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + samples.len() * 2);
    out.extend_from_slice(&header((samples.len() * 2) as u32, None));
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

/// A complete 8 kHz mono G.711 WAV file (what the shipped prompts are: half the size of PCM).
pub fn encode_g711(samples: &[i16], law: Law) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN + samples.len()];
    out[..HEADER_LEN].copy_from_slice(&header(samples.len() as u32, Some(law)));
    law.encode(samples, &mut out[HEADER_LEN..]);
    out
}

/// Streams 16-bit PCM samples to a file; [`WavWriter::finish`] patches the header.
#[derive(Debug)]
pub struct WavWriter {
    file: io::BufWriter<File>,
    samples: u64,
}

impl WavWriter {
    /// Starts a file with a header whose sizes say "unknown" (0) until [`Self::finish`].
    pub fn create(file: File) -> io::Result<WavWriter> {
        let mut file = io::BufWriter::with_capacity(16 * 1024, file);
        file.write_all(&header(0, None))?;
        Ok(WavWriter { file, samples: 0 })
    }

    /// Appends samples.
    pub fn write(&mut self, samples: &[i16]) -> io::Result<()> {
        // Little-endian in chunks through a stack buffer: no allocation per call.
        let mut buf = [0u8; 512];
        for chunk in samples.chunks(buf.len() / 2) {
            for (b, s) in buf.chunks_exact_mut(2).zip(chunk) {
                b.copy_from_slice(&s.to_le_bytes());
            }
            self.file.write_all(&buf[..chunk.len() * 2])?;
        }
        self.samples += samples.len() as u64;
        Ok(())
    }

    /// Samples written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Pushes buffered samples to the file (a crash after this loses nothing written before).
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Keeps the first `keep` samples (at most what was written), patches the header and
    /// syncs the file to disk.
    pub fn finish(self, keep: u64) -> io::Result<u64> {
        let keep = keep.min(self.samples);
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        let data_len = (keep * 2).min(u32::MAX as u64 - 36) as u32;
        file.set_len(HEADER_LEN as u64 + data_len as u64)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header(data_len, None))?;
        file.sync_all()?;
        Ok(keep)
    }
}

/// Fixes the header of a 16-bit PCM file written by [`WavWriter`] that was never finished
/// (podpbx stopped mid-recording). Returns the number of samples it holds.
pub fn repair(file: &mut File) -> io::Result<u64> {
    let len = file.metadata()?.len();
    if len < HEADER_LEN as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "shorter than a WAV header",
        ));
    }
    let data_len = ((len - HEADER_LEN as u64) & !1).min(u32::MAX as u64 - 36);
    file.set_len(HEADER_LEN as u64 + data_len)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&header(data_len as u32, None))?;
    file.sync_all()?;
    Ok(data_len / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect()
    }

    #[test]
    fn pcm_round_trip() {
        let s = tone(800);
        let f = encode(&s);
        assert_eq!(f.len(), HEADER_LEN + 1600);
        assert_eq!(decode(&f, 10).expect("decode"), s);
    }

    #[test]
    fn g711_files_decode() {
        let s = tone(400);
        for law in [Law::Ulaw, Law::Alaw] {
            let f = encode_g711(&s, law);
            let back = decode(&f, 10).expect("decode");
            assert_eq!(back.len(), s.len());
            for (a, b) in back.iter().zip(&s) {
                assert!((*a as i32 - *b as i32).abs() < 600, "{law:?} {a} {b}");
            }
        }
    }

    #[test]
    fn extra_chunks_and_odd_padding_are_skipped() {
        let s = tone(100);
        let plain = encode(&s);
        let mut f = plain[..12].to_vec();
        f.extend_from_slice(b"LIST");
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(b"abc\0"); // 3 bytes + 1 pad
        f.extend_from_slice(&plain[12..]);
        assert_eq!(decode(&f, 10).expect("decode"), s);
    }

    #[test]
    fn extensible_pcm_is_accepted() {
        let s = tone(50);
        let mut f = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        f.extend_from_slice(&40u32.to_le_bytes());
        f.extend_from_slice(&FORMAT_EXTENSIBLE.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&8000u32.to_le_bytes());
        f.extend_from_slice(&16000u32.to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&16u16.to_le_bytes());
        f.extend_from_slice(&22u16.to_le_bytes());
        f.extend_from_slice(&16u16.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes());
        let mut guid = [0u8; 16];
        guid[0] = 1;
        f.extend_from_slice(&guid);
        f.extend_from_slice(b"data");
        f.extend_from_slice(&100u32.to_le_bytes());
        for x in &s {
            f.extend_from_slice(&x.to_le_bytes());
        }
        assert_eq!(decode(&f, 10).expect("decode"), s);
    }

    fn with_fmt(tag: u16, channels: u16, rate: u32, bits: u16, block: u16) -> Vec<u8> {
        let mut f = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        f.extend_from_slice(&16u32.to_le_bytes());
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * block as u32).to_le_bytes());
        f.extend_from_slice(&block.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        f.extend_from_slice(b"data");
        f.extend_from_slice(&8u32.to_le_bytes());
        f.extend_from_slice(&[0u8; 8]);
        f
    }

    #[test]
    fn malformed_files_get_clear_errors() {
        let ok = encode(&tone(100));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello".to_vec(), "not a WAV file"),
            (b"RIFF\0\0\0\0AVI LIST".to_vec(), "not a WAV file"),
            (ok[..40].to_vec(), "no `data` chunk"),
            (ok[..30].to_vec(), "chunk `fmt ` runs past the end"),
            (
                {
                    let mut f = ok.clone();
                    f[40..44].copy_from_slice(&10_000u32.to_le_bytes());
                    f
                },
                "chunk `data` runs past the end",
            ),
            (
                {
                    let mut f = ok[..12].to_vec();
                    f.extend_from_slice(&ok[36..]);
                    f
                },
                "no `fmt ` chunk",
            ),
            (with_fmt(1, 2, 8000, 16, 4), "channel count 2"),
            (with_fmt(1, 1, 44100, 16, 2), "sample rate 44100 Hz"),
            (with_fmt(1, 1, 8000, 8, 1), "8-bit PCM"),
            (with_fmt(3, 1, 8000, 32, 4), "format 0x0003"),
            (with_fmt(1, 1, 8000, 16, 3), "block align 3"),
            (
                {
                    let mut f = ok.clone();
                    f[16..20].copy_from_slice(&8u32.to_le_bytes());
                    f
                },
                "at least 16 are needed",
            ),
            (encode(&[]), "holds no audio"),
            (encode(&tone(8000 * 3)), "3.0 s of audio, at most 2 s"),
        ];
        for (bytes, want) in cases {
            let e = decode(&bytes, 2).expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        // The conversion hint is part of format errors.
        let e = decode(&with_fmt(1, 1, 44100, 16, 2), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sox"), "{e}");
    }

    #[test]
    fn no_input_panics() {
        // Every prefix and a few byte flips of a valid file.
        let f = encode(&tone(64));
        for n in 0..f.len() {
            let _ = decode(&f[..n], 1);
        }
        for i in 0..f.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut g = f.clone();
                g[i] = v;
                let _ = decode(&g, 1);
            }
        }
    }

    #[test]
    fn streamed_file_is_finished_and_repaired() {
        let dir = std::env::temp_dir().join(format!("podpbx-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = tone(1000);
        // Finished normally, keeping 600 samples.
        let p = dir.join("a.wav");
        let mut w = WavWriter::create(File::create(&p).unwrap()).unwrap();
        w.write(&s[..500]).unwrap();
        w.write(&s[500..]).unwrap();
        assert_eq!(w.finish(600).unwrap(), 600);
        assert_eq!(decode(&std::fs::read(&p).unwrap(), 10).unwrap(), &s[..600]);
        // Abandoned mid-way (a crash): the header still says 0; repair fixes it.
        let p = dir.join("b.wav");
        let mut w = WavWriter::create(File::create(&p).unwrap()).unwrap();
        w.write(&s).unwrap();
        w.flush().unwrap();
        drop(w);
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(&raw[40..44], &[0, 0, 0, 0]);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        assert_eq!(repair(&mut f).unwrap(), 1000);
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(
            u32::from_le_bytes([raw[40], raw[41], raw[42], raw[43]]),
            2000
        );
        assert_eq!(decode(&raw, 10).unwrap(), s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
