//! The prompts a session plays: the default set shipped in `prompts/` (generated with
//! espeak-ng by `prompts/generate.sh`, embedded in the binary so a FROM-scratch image needs no
//! files), decoded once at start, plus the beep before recording, made here.

use std::sync::Arc;

use crate::wav;

/// Shared, immutable audio.
pub type Clip = Arc<[i16]>;

macro_rules! prompts {
    ($($variant:ident => $file:literal,)*) => {
        /// A prompt of the default set.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Prompt { $($variant,)* }

        impl Prompt {
            /// Every prompt.
            pub const ALL: &'static [Prompt] = &[$(Prompt::$variant,)*];

            /// The file name in `prompts/` (without `.wav`).
            pub fn name(self) -> &'static str {
                match self { $(Prompt::$variant => $file,)* }
            }

            fn bytes(self) -> &'static [u8] {
                match self { $(Prompt::$variant => include_bytes!(concat!("../prompts/", $file, ".wav")),)* }
            }
        }
    };
}

prompts! {
    Greeting => "greeting",
    Saved => "saved",
    Goodbye => "goodbye",
    MailboxFull => "mailbox-full",
    EnterPin => "enter-pin",
    WrongPin => "wrong-pin",
    YouHave => "you-have",
    NewMessage => "new-message",
    NewMessages => "new-messages",
    OldMessage => "old-message",
    OldMessages => "old-messages",
    And => "and",
    NoMessages => "no-messages",
    MainMenu => "main-menu",
    Message => "message",
    MessageMenu => "message-menu",
    Deleted => "deleted",
    NoMore => "no-more",
    Invalid => "invalid",
    Activated => "activated",
    Deactivated => "deactivated",
    NotAllowed => "not-allowed",
    N0 => "n0", N1 => "n1", N2 => "n2", N3 => "n3", N4 => "n4", N5 => "n5", N6 => "n6",
    N7 => "n7", N8 => "n8", N9 => "n9", N10 => "n10", N11 => "n11", N12 => "n12",
    N13 => "n13", N14 => "n14", N15 => "n15", N16 => "n16", N17 => "n17", N18 => "n18",
    N19 => "n19", N20 => "n20", N30 => "n30", N40 => "n40", N50 => "n50", N60 => "n60",
    N70 => "n70", N80 => "n80", N90 => "n90",
}

const SMALL: [Prompt; 21] = [
    Prompt::N0,
    Prompt::N1,
    Prompt::N2,
    Prompt::N3,
    Prompt::N4,
    Prompt::N5,
    Prompt::N6,
    Prompt::N7,
    Prompt::N8,
    Prompt::N9,
    Prompt::N10,
    Prompt::N11,
    Prompt::N12,
    Prompt::N13,
    Prompt::N14,
    Prompt::N15,
    Prompt::N16,
    Prompt::N17,
    Prompt::N18,
    Prompt::N19,
    Prompt::N20,
];
const TENS: [Prompt; 8] = [
    Prompt::N20,
    Prompt::N30,
    Prompt::N40,
    Prompt::N50,
    Prompt::N60,
    Prompt::N70,
    Prompt::N80,
    Prompt::N90,
];

/// The prompts that say `n`: 0-20 as words, 21-99 as tens and units, larger numbers digit by
/// digit.
pub fn number(n: usize, out: &mut Vec<Prompt>) {
    match n {
        0..=20 => out.push(SMALL[n]),
        21..=99 => {
            out.push(TENS[n / 10 - 2]);
            if !n.is_multiple_of(10) {
                out.push(SMALL[n % 10]);
            }
        }
        _ => {
            for d in n.to_string().bytes() {
                out.push(SMALL[(d - b'0') as usize]);
            }
        }
    }
}

/// Length of the beep before recording.
const BEEP_MS: usize = 400;

/// The decoded prompt set.
#[derive(Debug, Clone)]
pub struct Prompts {
    clips: Vec<Clip>,
    beep: Clip,
}

impl Prompts {
    /// Decodes the embedded set. An error means a broken file in `prompts/` (a unit test reads
    /// them all).
    pub fn embedded() -> Result<Prompts, String> {
        let mut clips = Vec::with_capacity(Prompt::ALL.len());
        for p in Prompt::ALL {
            let samples = wav::decode(p.bytes(), 60).map_err(|e| format!("{}: {e}", p.name()))?;
            clips.push(Clip::from(samples));
        }
        Ok(Prompts {
            clips,
            beep: beep(),
        })
    }

    /// The audio of `p`.
    pub fn clip(&self, p: Prompt) -> &Clip {
        &self.clips[p as usize]
    }

    /// The beep.
    pub fn beep(&self) -> &Clip {
        &self.beep
    }
}

/// 1 kHz at -12 dBFS with 10 ms ramps, as the usual "record after the tone" beep.
fn beep() -> Clip {
    let n = BEEP_MS * 8;
    let ramp = 80.0;
    (0..n)
        .map(|i| {
            let env = (i as f64 / ramp).min((n - i) as f64 / ramp).min(1.0);
            let v = (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 8000.0).sin();
            (v * env * 8200.0) as i16
        })
        .collect::<Vec<_>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_prompt_decodes_and_speaks() {
        let p = Prompts::embedded().expect("prompts");
        for &x in Prompt::ALL {
            let c = p.clip(x);
            let secs = c.len() as f64 / 8000.0;
            assert!((0.15..15.0).contains(&secs), "{}: {secs} s", x.name());
            let rms = (c.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt();
            assert!(rms > 300.0, "{} is silent (rms {rms})", x.name());
        }
        assert_eq!(p.beep().len(), 3200);
    }

    #[test]
    fn numbers() {
        let say = |n| {
            let mut v = Vec::new();
            number(n, &mut v);
            v.iter().map(|p| p.name()).collect::<Vec<_>>().join(" ")
        };
        assert_eq!(say(0), "n0");
        assert_eq!(say(13), "n13");
        assert_eq!(say(20), "n20");
        assert_eq!(say(21), "n20 n1");
        assert_eq!(say(40), "n40");
        assert_eq!(say(99), "n90 n9");
        assert_eq!(say(105), "n1 n0 n5");
    }
}
