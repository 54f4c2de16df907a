//! Test tones and their detection, without external tools: a WAV writer for the sine each
//! softphone plays (8 kHz, mono, signed 16-bit: what G.711 carries), a tolerant WAV reader for
//! what baresip's `sndfile` module recorded, and a Goertzel filter to tell which tone a recording
//! holds. Everything is deterministic: no FFT library, no sox.

#![allow(dead_code)]

use std::f64::consts::PI;
use std::path::Path;

/// Sample rate of every tone and recording (G.711 narrowband).
pub const RATE: u32 = 8000;

/// Writes `secs` seconds of a sine at `freq` Hz with peak `amplitude` (0..1 of full scale) as a
/// 16-bit mono PCM WAV at [`RATE`].
pub fn write_tone(path: &Path, freq: f64, secs: u32, amplitude: f64) -> std::io::Result<()> {
    let n = (RATE * secs) as usize;
    let peak = amplitude.clamp(0.0, 1.0) * f64::from(i16::MAX);
    let mut data = Vec::with_capacity(n * 2);
    for i in 0..n {
        let s = (peak * (2.0 * PI * freq * i as f64 / f64::from(RATE)).sin()).round() as i16;
        data.extend_from_slice(&s.to_le_bytes());
    }
    let mut out = Vec::with_capacity(44 + data.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    std::fs::write(path, out)
}

/// A decoded recording: sample rate and the samples of the first channel, scaled to -1..1.
#[derive(Debug, Clone)]
pub struct Recording {
    pub rate: u32,
    pub samples: Vec<f64>,
}

impl Recording {
    pub fn secs(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.rate.max(1))
    }
}

/// Reads a 16-bit PCM WAV. Tolerant of a header that was never finalised (a `data` size of 0 or
/// larger than the file: the samples up to the end of the file are taken).
pub fn read_wav(path: &Path) -> Result<Recording, String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if b.len() < 12 || &b[0..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return Err(format!("{}: not a RIFF/WAVE file", path.display()));
    }
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (mut channels, mut rate, mut bits, mut format) = (0u16, 0u32, 0u16, 0u16);
    let mut pos = 12;
    // Chunks are walked in order; bounded by the file length (each step advances >= 8 bytes).
    while pos + 8 <= b.len() {
        let id = &b[pos..pos + 4];
        let size = u32_at(pos + 4) as usize;
        let body = pos + 8;
        if id == b"fmt " && body + 16 <= b.len() {
            format = u16_at(body);
            channels = u16_at(body + 2);
            rate = u32_at(body + 4);
            bits = u16_at(body + 14);
        } else if id == b"data" {
            if format != 1 && format != 0xFFFE {
                return Err(format!(
                    "{}: WAV format {format} is not PCM",
                    path.display()
                ));
            }
            if bits != 16 || channels == 0 {
                return Err(format!(
                    "{}: {bits}-bit, {channels} channels: expected 16-bit PCM",
                    path.display()
                ));
            }
            let avail = b.len() - body;
            let len = if size == 0 || size > avail {
                avail
            } else {
                size
            };
            let frame = 2 * channels as usize;
            let samples = b[body..body + len - len % frame]
                .chunks_exact(frame)
                .map(|f| f64::from(i16::from_le_bytes([f[0], f[1]])) / 32768.0)
                .collect();
            return Ok(Recording { rate, samples });
        }
        pos = body + size + (size & 1);
    }
    Err(format!("{}: no data chunk", path.display()))
}

/// Root mean square of `x` (full scale = 1.0).
pub fn rms(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|s| s * s).sum::<f64>() / x.len() as f64).sqrt()
}

/// Squared magnitude of the DFT of `x` at `freq` (Goertzel).
pub fn goertzel(x: &[f64], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Share of the window's energy that lies in the sinusoid at `freq`: 1.0 for a pure tone at
/// exactly that frequency (an integer number of cycles in the window), about 0 when absent.
pub fn purity(x: &[f64], rate: u32, freq: f64) -> f64 {
    let energy: f64 = x.iter().map(|s| s * s).sum();
    if energy <= 0.0 || x.is_empty() {
        return 0.0;
    }
    2.0 * goertzel(x, rate, freq) / (x.len() as f64 * energy)
}

/// The frequency with the largest Goertzel power, 50 Hz to just below Nyquist: a coarse scan in
/// 5 Hz steps over the first 0.1 s (whose resolution is 10 Hz), then 1 Hz steps around the
/// coarse peak over the whole window.
pub fn dominant(x: &[f64], rate: u32) -> f64 {
    let argmax = |w: &[f64], freqs: &mut dyn Iterator<Item = u32>| {
        freqs
            .map(|f| (f, goertzel(w, rate, f64::from(f))))
            .fold((0, f64::MIN), |best, c| if c.1 > best.1 { c } else { best })
            .0
    };
    let short = &x[..x.len().min(rate as usize / 10)];
    let top = rate / 2 - 50;
    let coarse = argmax(short, &mut (50..top).step_by(5));
    let fine = argmax(
        x,
        &mut (coarse.saturating_sub(10).max(50)..(coarse + 11).min(top)),
    );
    f64::from(fine)
}

/// What a recording holds, measured over one-second windows of its voiced part.
#[derive(Debug, Clone)]
pub struct ToneCheck {
    pub file: String,
    pub secs: f64,
    /// Number of one-second windows analysed (those with an RMS above the silence floor).
    pub windows: usize,
    /// Median RMS of the analysed windows (full scale 1.0; the tones are played at 0.5 peak,
    /// an RMS of about 0.35).
    pub rms: f64,
    /// Median dominant frequency of the windows.
    pub dominant_hz: f64,
    /// Median purity at the expected frequency.
    pub purity: f64,
    /// Highest median purity at any of the unexpected frequencies.
    pub foreign_purity: f64,
}

impl std::fmt::Display for ToneCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} s recorded, {} voiced 1 s windows, RMS {:.3}, dominant {:.0} Hz, purity {:.3}, \
             foreign {:.3}",
            self.secs, self.windows, self.rms, self.dominant_hz, self.purity, self.foreign_purity
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Measures `rec` against the `expected` tone and the `foreign` ones (e.g. the recording
/// phone's own tone: an echo or crossed media would show there).
pub fn check_tone(file: &str, rec: &Recording, expected: f64, foreign: &[f64]) -> ToneCheck {
    let win = rec.rate as usize;
    let windows: Vec<&[f64]> = rec
        .samples
        .chunks_exact(win.max(1))
        .filter(|w| rms(w) > 0.02)
        .collect();
    let foreign_purity = foreign
        .iter()
        .map(|f| median(windows.iter().map(|w| purity(w, rec.rate, *f)).collect()))
        .fold(0.0, f64::max);
    ToneCheck {
        file: file.to_owned(),
        secs: rec.secs(),
        windows: windows.len(),
        rms: median(windows.iter().map(|w| rms(w)).collect()),
        dominant_hz: median(windows.iter().map(|w| dominant(w, rec.rate)).collect()),
        purity: median(
            windows
                .iter()
                .map(|w| purity(w, rec.rate, expected))
                .collect(),
        ),
        foreign_purity,
    }
}

/// Waits (bounded: 3 s) for the newest recording of `b` to be finalised (libsndfile rewrites
/// the header on close), and checks it holds `expected` (dominant within 3 Hz, purity >= 0.8,
/// RMS >= 0.1, at least two voiced seconds) and none of `foreign` (purity < 0.05).
pub fn heard(
    b: &mut super::common::baresip::Baresip,
    expected: f64,
    foreign: &[f64],
) -> Result<ToneCheck, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let mut recs = Vec::new();
    while std::time::Instant::now() < deadline {
        recs.extend(b.new_recordings());
        let finalised = recs.last().is_some_and(|p| {
            std::fs::read(p).is_ok_and(|d| d.len() > 44 && d[40..44] != [0, 0, 0, 0])
        });
        if finalised {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let path = recs
        .last()
        .ok_or_else(|| format!("{}: no recording in {}", b.name, b.dir().display()))?
        .clone();
    let rec = read_wav(&path)?;
    let name = format!(
        "{}:{}",
        b.name,
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let c = check_tone(&name, &rec, expected, foreign);
    if c.windows >= 2
        && c.rms >= 0.1
        && (c.dominant_hz - expected).abs() <= 3.0
        && c.purity >= 0.8
        && c.foreign_purity < 0.05
    {
        Ok(c)
    } else {
        Err(format!("{} should hear {expected} Hz: {c}", b.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_finds_a_written_tone() {
        let dir = std::env::temp_dir().join(format!("podpbx-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.wav");
        write_tone(&p, 852.0, 3, 0.5).unwrap();
        let rec = read_wav(&p).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(rec.rate, RATE);
        assert_eq!(rec.samples.len(), 3 * RATE as usize);
        let c = check_tone("t.wav", &rec, 852.0, &[697.0, 1209.0]);
        assert_eq!(c.windows, 3);
        assert!((c.rms - 0.5 / 2f64.sqrt()).abs() < 0.01, "{c}");
        assert_eq!(c.dominant_hz, 852.0, "{c}");
        assert!(c.purity > 0.99, "{c}");
        assert!(c.foreign_purity < 0.01, "{c}");
    }
}
